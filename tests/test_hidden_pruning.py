"""Hidden-dimension pruning wired in (issue 35, item 1): ``PruningConfig.hidden_sparsity`` through the Pruner, the
planner, the pipeline and the saved model.

The learned score vector over the residual must get gradients, sit in the optimizer and the checkpoint, follow the
schedule to exactly its target count, start from a ranking, and be cut at finalize so that the cut model (with heads
and neurons shrunk too) computes what the masked model computed.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers
from tiny import HIDDEN, save_tiny_bert, tiny_batch, tiny_inputs, tiny_model, write_review_csvs

from blockprune import Pruner, PruningConfig, load_pruned
from blockprune.cli import main
from blockprune.deploy.counts import count_params, ffn_per_layer, flops_per_token, heads_per_layer
from blockprune.deploy.plan import PlanError, make_plan, planned_config, to_text
from blockprune.engine.config import ConfigError
from blockprune.engine.hidden_scores import hidden_keep
from blockprune.engine.objective import make_optimizer
from blockprune.engine.pruner import is_patched
from blockprune.engine.taylor import init_scores_taylor
from blockprune.surgery.arch import UnsupportedModelError
from blockprune.surgery.hidden import check_exact, hidden_width, model_output, residual_parts
from blockprune.surgery.shrink import shrink

TOL = 1e-4
KEEP = 24  # of HIDDEN = 32 at hidden_sparsity 0.25
ENCODERS = ["bert", "roberta", "electra", "distilbert", "mpnet"]
POS = ["great", "wonderful", "moving", "sharp", "funny", "brilliant"]
NEG = ["dull", "boring", "messy", "flat", "tedious", "awful"]


def _config(**changes) -> PruningConfig:
    return PruningConfig.preset("struct", **{"sparsity": 0.5, "hidden_sparsity": 0.25} | changes)


def _randomize(pruner: Pruner, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for scores in pruner.score_parameters():
            scores.copy_(torch.randn(scores.shape, generator=generator))


def _trained_at_target(model_type: str, seed: int) -> tuple[torch.nn.Module, Pruner]:
    """A pruner at its final sparsity whose last training forward pass recorded its masks."""
    model = tiny_model(model_type)
    pruner = Pruner(model, _config())
    _randomize(pruner, seed=seed)
    pruner.step(10, 10)
    model.train()
    model(**tiny_batch(model_type)).loss.backward()
    return model, pruner


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, "0.25", True, math.nan, None])
def test_a_bad_hidden_sparsity_is_one_config_error_naming_the_field(value) -> None:
    with pytest.raises(ConfigError, match=r"hidden_sparsity=.* must be a number in \[0, 1\)"):
        _config(hidden_sparsity=value)


def test_hidden_method_is_validated_and_both_fields_round_trip_json() -> None:
    with pytest.raises(ConfigError, match=r"hidden_method='soft' is unknown; choose one of \['topk'\]"):
        _config(hidden_method="soft")
    config = _config()
    assert PruningConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["hidden_sparsity"] == 0.25
    old = {k: v for k, v in config.to_dict().items() if not k.startswith("hidden_")}  # saved before the fields
    assert PruningConfig.from_dict(old).hidden_sparsity == 0.0


def test_a_model_without_a_hidden_spec_is_refused_before_anything_is_patched() -> None:
    gpt2 = tiny_model("gpt2", task="causal-lm")
    with pytest.raises(UnsupportedModelError, match="hidden_sparsity=0.25: hidden-dimension pruning does not support "
                                                    "model_type 'gpt2'.*Set hidden_sparsity=0"):
        Pruner(gpt2, _config())
    assert not is_patched(gpt2)
    mlm = tiny_model("bert", task="mlm")  # its decoder is tied to the embeddings: the residual cannot be cut
    with pytest.raises(UnsupportedModelError, match="does not support BertForMaskedLM"):
        Pruner(mlm, _config())
    assert not is_patched(mlm)
    Pruner(tiny_model("gpt2", task="causal-lm"), _config(hidden_sparsity=0.0))  # heads and neurons alone: fine


# ------------------------------------------------------------------------------------------ learning
def test_the_hidden_scores_learn_with_the_optimizer_and_ride_in_the_checkpoint() -> None:
    model = tiny_model("bert")
    pruner = Pruner(model, _config(score_lr=0.05))
    scores = pruner.hidden.state.scores
    assert scores.shape == (HIDDEN,) and any(p is scores for p in pruner.score_parameters())
    optimizer = make_optimizer(pruner, lr=1e-3)
    score_group = [g for g in optimizer.param_groups if any(p is scores for p in g["params"])]
    assert len(score_group) == 1 and score_group[0]["lr"] == 0.05 and score_group[0]["weight_decay"] == 0.0
    pruner.step(3, 10)  # mid-schedule: some dimensions masked
    assert HIDDEN > pruner.hidden.keep_count > KEEP
    model.train()
    loss = model(**tiny_batch("bert")).loss
    loss.backward()
    assert scores.grad is not None and bool((scores.grad != 0).any())  # straight through the top-k
    before = scores.detach().clone()
    optimizer.step()
    assert not torch.equal(scores.detach(), before)
    # the Trainer checkpoints the model's state (inside the objective): the scores and the training mask are in it
    state = model.state_dict()
    assert torch.equal(state["blockprune.hidden.scores"], scores.detach())
    assert bool(state["blockprune.hidden.has_last_mask"])


def test_a_resumed_run_keeps_the_hidden_scores_and_masks() -> None:
    model, pruner = _trained_at_target("bert", seed=3)  # the training masks are recorded
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = tiny_model("bert", seed=1)
    resumed = Pruner(fresh, _config())
    assert not torch.equal(resumed.hidden.state.scores.detach(), pruner.hidden.state.scores.detach())
    fresh.load_state_dict(saved, strict=True)
    assert torch.equal(resumed.hidden.state.scores.detach(), pruner.hidden.state.scores.detach())
    assert resumed.has_last_masks()  # a run resumed at its very end bakes what the checkpoint recorded
    assert torch.equal(resumed.hidden.final_mask(), pruner.hidden.final_mask())
    resumed.step(10, 10)
    assert resumed.hidden.mask.kept().tolist() == pruner.hidden.mask.kept().tolist()


def test_a_run_resumed_by_the_trainer_keeps_the_trained_hidden_scores(tmp_path) -> None:
    from blockprune.app.finetune import TrainSettings, train
    from blockprune.tasks import load_task

    model_dir = save_tiny_bert(tmp_path / "tinybert")
    data = write_review_csvs(tmp_path / "data", {"train.csv": 32}, POS, NEG)
    task = load_task(train_file=data / "train.csv", text_column="review", label_column="sentiment", seed=0,
                     max_length=16)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)

    def run() -> Pruner:
        student = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir)
        pruner = Pruner(student, _config(score_init_from="taylor", score_lr=0.1))
        settings = TrainSettings(epochs=1, batch_size=8, max_length=16, seed=0, save_steps=3, progress=False,
                                 overrides={"use_cpu": True, "max_steps": 3})
        train(student, task, tokenizer, tmp_path / "prune", settings, pruner=pruner)
        return pruner

    first = run()
    trained = first.hidden.state.scores.detach().clone()
    started = Pruner(transformers.AutoModelForSequenceClassification.from_pretrained(model_dir), _config())
    assert not torch.allclose(trained, started.hidden.state.scores.detach())  # training moved them
    second = run()  # finished: resumes from checkpoint-3, the hidden scores come from there
    assert torch.equal(second.hidden.state.scores.detach(), trained)
    assert second.hidden.final_mask().sum() == first.hidden.final_mask().sum() == KEEP


def test_the_schedule_reaches_exactly_the_target_keep_count() -> None:
    pruner = Pruner(tiny_model("bert"), _config(warmup=0.1, cooldown=0.2))
    counts = []
    for step in range(50):
        pruner.step(step, 50)
        counts.append(pruner.hidden.keep_count)
    assert counts[0] == HIDDEN and counts[-1] == KEEP == hidden_keep(HIDDEN, 0.25)
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))  # the cubic ramp only removes
    assert counts[-10:] == [KEEP] * 10  # the cooldown holds the final width
    assert len(set(counts)) > 3  # gradual, not a jump
    stats = pruner.stats()
    assert stats["hidden"] == KEEP / HIDDEN and stats["hidden_width"] == [HIDDEN, KEEP]
    logs = pruner.log_values()
    assert logs["prune/target_density_hidden"] == 0.75 and logs["prune/density_hidden"] == 0.75
    assert hidden_keep(384, 0.25) == 288 and hidden_keep(768, 0.999) == 1


def _zero_dimension(model: torch.nn.Module, dim: int) -> None:
    """Every weight of residual dimension ``dim``, everywhere, set to 0 (so it carries and costs nothing)."""
    parts = residual_parts(model)
    with torch.no_grad():
        for root, path in parts.readers:
            root.get_submodule(path).weight[:, dim] = 0
        for root, path in parts.writers:
            linear = root.get_submodule(path)
            linear.weight[dim] = 0
            linear.bias[dim] = 0
        for root, path in parts.norms:
            root.get_submodule(path).weight[dim] = 0
            root.get_submodule(path).bias[dim] = 0
        for root, path in parts.tables:
            root.get_submodule(path).weight[:, dim] = 0


@pytest.mark.parametrize("start", ["magnitude", "taylor"])
def test_the_scores_start_from_a_ranking_that_drops_a_dead_dimension_first(start) -> None:
    model = tiny_model("bert")
    _zero_dimension(model, 5)
    pruner = Pruner(model, _config(score_init_from=start, score_init=0.5))
    magnitude = pruner.hidden.state.scores.detach().clone()
    assert int(magnitude.argmin()) == 5 and float(magnitude[5]) == 0.5  # importance 0: the constant alone
    assert float(magnitude.mean()) == pytest.approx(1.5)  # importance over its mean averages 1
    if start == "taylor":
        assert init_scores_taylor(pruner, model, [tiny_batch("bert")]) == 1
        taylor = pruner.hidden.state.scores.detach()
        assert not torch.allclose(taylor, magnitude)  # the gradients' ranking replaced the magnitude start
        assert int(taylor.argmin()) == 5 and float(taylor[5]) == 0.5
        assert all(p.grad is None for p in model.parameters())  # the estimate leaves no gradient behind
    step = 0
    while pruner.hidden.keep_count == HIDDEN:  # warm-up, then the ramp's first cut: one dimension goes
        pruner.step(step, 100)
        step += 1
    assert pruner.hidden.keep_count == HIDDEN - 1 and 5 not in pruner.hidden.mask.kept().tolist()


# ------------------------------------------------------------------------------------------ finalize
@pytest.mark.parametrize("model_type", ENCODERS)
def test_finalize_cuts_the_residual_and_shrink_removes_heads_and_neurons_exactly(model_type) -> None:
    model = tiny_model(model_type)
    pruner = Pruner(model, _config())
    _randomize(pruner)
    pruner.step(10, 10)
    inputs = tiny_inputs()
    expected = model_output(model, inputs)  # the masked model: heads, neurons and residual dimensions
    kept = pruner.hidden.mask.kept()
    out = pruner.finalize(inputs=inputs)
    assert out is model and not is_patched(model)
    result = pruner.hidden_result
    assert result.kept == kept.tolist() and result.width_before == HIDDEN and result.width_after == KEEP
    assert result.max_abs_diff is not None and result.max_abs_diff <= TOL
    assert hidden_width(model) == KEEP
    assert check_exact(expected, model, inputs, atol=TOL) <= TOL
    cut = shrink(model)
    assert heads_per_layer(model) == [2, 2] and ffn_per_layer(model) == [32, 32]
    assert cut.params_after < cut.params_before
    assert check_exact(expected, model, inputs, atol=TOL) <= TOL
    assert all(p.requires_grad for p in model.parameters())  # the fill stage trains the cut model


def test_finalize_cuts_the_dimensions_training_ran_with_not_the_moved_scores() -> None:
    model, pruner = _trained_at_target("distilbert", seed=2)  # the last training forward pass records its mask
    trained_with = pruner.hidden.mask.kept().tolist()
    with torch.no_grad():  # the optimizer step after it moves the scores once more: here, to the reverse ranking
        pruner.hidden.state.scores.neg_()
    assert pruner.hidden.mask.kept().tolist() != trained_with
    pruner.finalize(inputs=tiny_inputs())
    assert pruner.hidden_result.kept == trained_with and pruner.hidden_result.max_abs_diff <= TOL
    assert model.training  # the exactness check ran in eval mode and left the mode as it was


# ------------------------------------------------------------------------------------------ planner
@pytest.fixture(scope="module")
def bert_config_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert")
    tiny_model("bert", task="base").config.save_pretrained(path)
    return path


@pytest.mark.parametrize("target", [2.0, 3.0])
def test_the_plan_counts_the_narrower_residual_as_prune_and_shrink_leave_it(bert_config_dir, target) -> None:
    config = planned_config("struct", target_speedup=target, overrides={"hidden_sparsity": 0.25}, ffn_multiple=1,
                            model_path=str(bert_config_dir), max_length=16)
    plain = planned_config("struct", target_speedup=target, ffn_multiple=1, model_path=str(bert_config_dir),
                           max_length=16)
    planned = make_plan(str(bert_config_dir), config, preset="struct", seq_len=16, ffn_multiple=1,
                        target={"kind": "speedup", "value": target})
    without = make_plan(str(bert_config_dir), plain, seq_len=16, ffn_multiple=1)
    kept, kept_without = (planned["heads"][0], planned["ffn"][0]), (without["heads"][0], without["ffn"][0])
    assert kept != kept_without and min(a - b for a, b in zip(kept, kept_without, strict=True)) >= 0  # the cut pays
    assert planned["hidden"]["before"] == HIDDEN and planned["hidden"]["after"] == KEEP
    dense, model = tiny_model("bert", task="base"), tiny_model("bert", task="base")
    pruner = Pruner(model, config)
    _randomize(pruner)
    pruner.step(10, 10)
    pruner.finalize(inputs=tiny_inputs())
    shrink(model)
    assert planned["heads"] == heads_per_layer(model) and planned["ffn"] == ffn_per_layer(model)
    assert planned["flops_per_token"]["after"] == flops_per_token(model, 16)["total"]
    assert planned["flops_per_token"]["before"] == flops_per_token(dense, 16)["total"]
    assert planned["params"]["total"]["after"] == count_params(model)["total"]
    assert target <= planned["theoretical_speedup"] < target * 1.25  # whole units round, the target is met
    hidden_alone = planned["hidden"]["speedup"]
    assert 1.0 < hidden_alone < 1.0 / 0.75  # the linears cost 3/4, the attention matmuls do not shrink
    text = to_text(planned)
    assert "hidden 32 \u2192 24" in text
    assert (f"speedup split of the target {target}x: the residual cut {hidden_alone:.2f}x \u00d7 heads and neurons "
            f"{target / hidden_alone:.2f}x (planned in whole units: ") in text


def test_a_flops_budget_counts_the_residual_cut_as_the_planner_does(bert_config_dir) -> None:
    config = planned_config("hybrid", target_speedup=2.0, overrides={"hidden_sparsity": 0.25, "attention_block": [8, 8]},
                            model_path=str(bert_config_dir), max_length=16)
    assert config.ffn_budget == "flops" and config.seq_len == 16
    planned = make_plan(str(bert_config_dir), config, seq_len=16, ffn_multiple=1)
    pruner = Pruner(tiny_model("bert", task="base"), config)
    assert pruner._freed.width_scale == 0.75
    # no head emptied yet: the FFN density the engine's budget gives is the plan's least FFN, on the cut residual
    assert pruner._freed.ffn_density(config.sparsity) * 64 == pytest.approx(planned["ffn_kept"][0], abs=0.5)
    plain = Pruner(tiny_model("bert", task="base"), config.replace(hidden_sparsity=0.0))
    assert plain._freed.ffn_density(config.sparsity) != pytest.approx(pruner._freed.ffn_density(config.sparsity))


def test_an_unreachable_target_names_the_reachable_one(bert_config_dir) -> None:
    common = dict(overrides={"hidden_sparsity": 0.25}, model_path=str(bert_config_dir), max_length=16)
    with pytest.raises(PlanError, match=r"--target-speedup 40.0 cannot be reached with hidden_sparsity=0.25: .*"
                                        r"the reachable target is (\d+\.\d\d)x") as err:
        planned_config("struct", target_speedup=40.0, **common)
    reachable = float(err.value.args[0].split("reachable target is ")[1].split("x")[0])
    assert 20.0 < reachable < 40.0  # beyond what heads and neurons alone reach (20x), thanks to the cut
    # in fractions; whole units (no head left, FFN padded to 16 of 64 neurons) then name what they reach
    with pytest.raises(PlanError, match=r"cannot be reached in whole units: 0 heads and 16 FFN neurons per layer "
                                        r"give (\d+\.\d\d)x; ask for at most that") as err:
        planned_config("struct", target_speedup=reachable, **common)
    whole = float(err.value.args[0].split(" give ")[1].split("x")[0])
    at_whole = planned_config("struct", target_speedup=whole, **common)  # and that is reached
    assert 1.0 < whole < reachable
    assert make_plan(str(bert_config_dir), at_whole, seq_len=16)["theoretical_speedup"] >= whole
    with pytest.raises(PlanError, match="hidden_sparsity=0.9 alone gives .* lower hidden_sparsity"):
        planned_config("struct", target_speedup=1.1, **{**common, "overrides": {"hidden_sparsity": 0.9}})
    gpt2 = bert_config_dir.parent / "gpt2-config"
    tiny_model("gpt2", task="base").config.save_pretrained(gpt2)
    with pytest.raises(PlanError, match="hidden_sparsity=0.25: hidden-dimension pruning does not support"):
        planned_config("struct", target_speedup=2.0, overrides={"hidden_sparsity": 0.25}, model_path=str(gpt2))


def test_blockprune_plan_says_how_the_target_splits(bert_config_dir, capsys) -> None:
    assert main(["plan", "--model", str(bert_config_dir), "--set", "hidden_sparsity=0.25", "--target-speedup", "4",
                 "--max-length", "16", "--ffn-multiple", "1"]) == 0
    out = capsys.readouterr().out
    assert "hidden 32 \u2192 24" in out and "speedup split of the target 4.0x" in out
    assert main(["plan", "--model", str(bert_config_dir), "--set", "hidden_sparsity=0.25", "--target-speedup", "4",
                 "--max-length", "16", "--ffn-multiple", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["hidden"]["after"] == KEEP and result["theoretical_speedup"] == pytest.approx(4.0, rel=0.15)


# ------------------------------------------------------------------------------------------ the run
@pytest.mark.slow
def test_blockprune_prune_with_hidden_sparsity_end_to_end(tmp_path, capsys) -> None:
    model_dir = save_tiny_bert(tmp_path / "tinybert")
    data = write_review_csvs(tmp_path / "data", {"train.csv": 64, "dev.csv": 32}, POS, NEG)
    out = tmp_path / "run"
    args = ["prune", "--model", str(model_dir), "--train-file", str(data / "train.csv"), "--validation-file",
            str(data / "dev.csv"), "--text-column", "review", "--label-column", "sentiment", "--preset", "struct",
            "--sparsity", "0.5", "--set", "hidden_sparsity=0.25", "--epochs", "1", "--teacher-epochs", "1",
            "--fill", "--fill-epochs", "1", "--layer-distill", "1", "--batch-size", "16", "--learning-rate", "1e-3",
            "--teacher-learning-rate", "1e-3", "--bench-repeats", "2", "--bench-batch-sizes", "1",
            "--no-progress", "--max-length", "16", "--ffn-multiple", "1", "--output-dir", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert report["hidden"]["before"] == HIDDEN and report["hidden"]["after"] == KEEP
    assert report["hidden"]["max_abs_diff"] <= TOL
    assert report["pruning"]["config"]["hidden_sparsity"] == 0.25
    assert report["pruning"]["density"]["hidden"] == 0.75
    assert report["plan"]["hidden"]["after"] == KEEP
    assert report["heads_kept"] == [2, 2] and report["ffn_width"] == [32, 32]
    assert "hidden 32 \u2192 24" in (out / "report.md").read_text()
    assert "hidden 32 \u2192 24" in (out / "model" / "README.md").read_text()  # the model card says so too
    prune = json.loads((out / "prune" / "done.json").read_text())
    assert len(prune["hidden"]["kept"]) == KEEP and prune["hidden"]["max_abs_diff"] <= TOL
    final = load_pruned(out / "model")
    shrunk = json.loads((out / "shrink" / "done.json").read_text())
    assert shrunk["max_abs_diff"] <= TOL
    dense = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir)
    # against the dense model, not the narrowed one the prune stage left: the residual cut counts in the speedup
    assert shrunk["theoretical"] == pytest.approx(flops_per_token(dense, 16)["total"]
                                                  / flops_per_token(final, 16)["total"], rel=1e-9)
    assert hidden_width(final) == KEEP == int(0.75 * HIDDEN)
    assert heads_per_layer(final) == [2, 2]
    assert report["params"]["total"]["after"] == count_params(final)["total"]
    # the filled model (trained at the cut width) reproduces the evaluated accuracy
    assert main(["eval", str(out / "model"), "--train-file", str(data / "train.csv"), "--validation-file",
                 str(data / "dev.csv"), "--text-column", "review", "--label-column", "sentiment",
                 "--max-length", "16"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(report["final"]["metric"])
