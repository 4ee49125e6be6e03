"""The model card written by training, and uploads checked at the network boundary: huggingface_hub runs for real,
only its HTTP transport answers locally, so the test sees exactly the files and the card that would be sent."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from fer_hf import push
from fer_hf.labels import LABEL_NAMES
from fer_hf.report.model_card import GENERATED_MARKER

REPO_ID = "tester/fer2013-resnet18"


class FakeHub:
    """An httpx transport standing in for the Hub's HTTP API: records every request, answers like the Hub."""

    def __init__(self):
        self.requests: list[tuple[str, str, bytes]] = []
        self.commits: list[dict] = []  # path -> bytes, per commit
        self.validated: list[str] = []  # README contents sent for metadata validation

    def handle(self, request):
        import httpx2

        body = request.read()
        path = request.url.path
        self.requests.append((request.method, path, body))
        assert request.headers.get("authorization") == "Bearer hf_fake_token"
        if path == "/api/repos/create":
            name = json.loads(body)
            return httpx2.Response(200, json={"url": f"https://huggingface.co/{name.get('organization') or 'tester'}/"
                                                     f"{name['name']}", "name": name["name"]})
        if path == "/api/validate-yaml":  # huggingface_hub has the Hub check a README's metadata before committing
            self.validated.append(json.loads(body)["content"])
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if path.endswith("/preupload/main"):
            files = json.loads(body)["files"]
            return httpx2.Response(200, json={"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if path.endswith("/commit/main"):
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            files = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
                     for line in lines if line["key"] == "file"}
            self.commits.append(files)
            return httpx2.Response(200, json={"commitUrl": f"https://huggingface.co/{REPO_ID}/commit/abc123",
                                              "commitOid": "abc123", "pullRequestUrl": None})
        return httpx2.Response(404, json={"error": f"FakeHub: unexpected {request.method} {path}"})


@pytest.fixture
def fake_hub(monkeypatch):
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    hub = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(hub.handle),
                                                   event_hooks={"request": [_http.hf_request_event_hook]}))
    yield hub
    _http.set_client_factory(_http.default_client_factory)


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """The trained run without its checkpoints (the card is rewritten by a push; keep the session's run intact)."""
    return Path(shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoint-*")))


def test_training_writes_a_model_card_with_the_measured_numbers(trained_run):
    card_path = trained_run / "README.md"
    text = card_path.read_text()
    results = json.loads((trained_run / "all_results.json").read_text())
    assert GENERATED_MARKER in text
    for prefix in ("eval", "test"):  # validation and test rows: accuracy, macro P, R, F1, paper F1
        row = " | ".join(f"{100 * results[f'{prefix}_{k}']:.2f}" for k in ("accuracy", "precision", "recall", "f1",
                                                                           "paper_f1"))
        assert row in text, prefix
    test_matrix = json.loads((trained_run / "confusion_matrix_test.json").read_text())
    for label, scores in test_matrix["per_class"].items():
        assert f"| {label} | {100 * scores['precision']:.2f} | {100 * scores['recall']:.2f} | " \
               f"{100 * scores['f1']:.2f} | {scores['support']} |" in text
    for fact in ("`adamw_torch`", "| Learning rate | 0.002 |", "`linear`", "3 planned", "| Image size | 48 px |",
                 "![Confusion matrix on the test split", "(confusion_matrix_test.png)", "(accuracy_curve.png)",
                 'pipeline("image-classification"', "Do not use it for decisions about individuals",
                 "in-the-wild", "Trained on synthetic faces"):
        assert fact in text, fact
    for figure in ("confusion_matrix_test.png", "accuracy_curve.png", "loss_curve.png"):
        assert (trained_run / figure).is_file()
    for i, label in enumerate(LABEL_NAMES):
        assert f"| {i} | {label} |" in text
    metadata = ModelCard.load(card_path).data
    assert metadata.pipeline_tag == "image-classification" and metadata.library_name == "transformers"
    accuracies = {r.dataset_split: r.metric_value for r in metadata.eval_results if r.metric_type == "accuracy"}
    assert accuracies == {"validation": round(results["eval_accuracy"], 4), "test": round(results["test_accuracy"], 4)}


def test_model_card_usage_snippet_runs(trained_run, fer2013, tmp_path, monkeypatch, capsys):
    text = (trained_run / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert f'model="{trained_run.resolve()}"' in snippet
    fer2013["test"][0]["image"].save(tmp_path / "face.jpg")
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert all(f"'label': '{label}'" in printed for label in LABEL_NAMES)


def test_push_uploads_model_card_and_figures(run_copy, fake_hub, capsys):
    assert push.main([str(run_copy), "--repo_id", REPO_ID, "--token", "hf_fake_token"]) == 0
    assert f"https://huggingface.co/{REPO_ID}/commit/abc123" in capsys.readouterr().out
    (sent,) = fake_hub.commits
    assert {"config.json", "model.safetensors", "README.md", "args.yaml", "all_results.json",
            "confusion_matrix_test.png", "confusion_matrix_validation.png", "accuracy_curve.png",
            "loss_curve.png"} <= set(sent)
    assert not any(name.startswith("checkpoint-") or name.endswith(".bin") for name in sent)
    assert sent["model.safetensors"] == (run_copy / "model.safetensors").read_bytes()
    card = sent["README.md"].decode()
    assert f'pipeline("image-classification", model="{REPO_ID}")' in card  # the card names the repository
    results = json.loads((run_copy / "all_results.json").read_text())
    assert f"{100 * results['test_accuracy']:.2f}" in card
    paths = [path for _, path, _ in fake_hub.requests]
    assert paths.index("/api/repos/create") < paths.index(f"/api/models/{REPO_ID}/commit/main")
    assert fake_hub.validated == [card]


def test_trainer_push_to_hub_sends_our_card_not_the_generic_one(run_copy, fake_hub):
    from transformers import TimmWrapperForImageClassification, TrainingArguments

    from fer_hf.trainer import FerTrainer

    args = TrainingArguments(output_dir=str(run_copy), push_to_hub=True, hub_model_id=REPO_ID,
                             hub_token="hf_fake_token", report_to="none", use_cpu=True)
    trainer = FerTrainer(model=TimmWrapperForImageClassification.from_pretrained(run_copy), args=args)
    trainer.push_to_hub(finetuned_from="resnet18", dataset="FER-2013")
    card = fake_hub.commits[-1]["README.md"].decode()
    assert GENERATED_MARKER in card and f'model="{REPO_ID}"' in card
    assert "More information needed" not in card  # Trainer's generic template


def test_push_offline_or_without_credentials_fails_clearly(run_copy, monkeypatch, tmp_path, capsys):
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # conftest: tests run offline
    assert push.main([str(run_copy), "--repo_id", REPO_ID]) == 1
    err = capsys.readouterr().err
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in err and str(run_copy) in err

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no_tokens"))
    assert push.main([str(run_copy), "--repo_id", REPO_ID]) == 1
    assert "no Hugging Face credentials" in capsys.readouterr().err

    assert push.main([str(tmp_path / "nowhere"), "--repo_id", REPO_ID, "--dry_run"]) == 1
    assert "no such folder" in capsys.readouterr().err


def test_card_of_a_one_channel_model_gives_a_snippet_that_works(tmp_path, monkeypatch, capsys):
    """transformers' timm processor always yields RGB, so the pipeline cannot feed a 1-channel stem; the card says so
    and its snippet must give what fer_hf's own preprocessing gives."""
    import ast

    import numpy as np
    from PIL import Image

    from fer_hf.inference.classifier import load_classifier, softmax
    from fer_hf.modeling import build_model
    from fer_hf.report.model_card import write_model_card

    model_dir = tmp_path / "gray"
    build_model("resnet18", pretrained=False, in_chans=1, image_size=48).save_pretrained(model_dir)
    text = write_model_card(model_dir).read_text()  # a bare model folder: no recipe, no results, still a card
    assert "Not recorded" in text and "one-channel" in text
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    face = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8))
    face.save(tmp_path / "face.jpg")
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    printed = ast.literal_eval(capsys.readouterr().out.strip().splitlines()[-1])
    expected = softmax(load_classifier(model_dir, device="cpu").predict([Image.open(tmp_path / "face.jpg")]))[0]
    assert list(printed) == list(LABEL_NAMES)
    assert np.allclose(list(printed.values()), expected, atol=1e-4)


def test_what_reads_as_a_hub_id(tmp_path, monkeypatch):
    from fer_hf.hub import is_hub_id

    monkeypatch.chdir(tmp_path)
    assert is_hub_id("someone/fer-lite0")
    assert not any(is_hub_id(name) for name in (None, "", "fer-lite0", "a/b/c", "/abs"))
    (tmp_path / "someone" / "fer-lite0").mkdir(parents=True)
    assert not is_hub_id("someone/fer-lite0")  # a local folder of that name wins


def test_the_card_names_the_ingredients_a_run_switched_on():
    from fer_hf.report.model_card import _ingredients

    assert _ingredients({"label_smoothing_factor": 0.0, "class_weighting": "none", "model_ema": False}) == "none"
    text = _ingredients({"label_smoothing_factor": 0.1, "reprob": 0.25, "model_ema": True, "model_ema_decay": 0.9995,
                         "distill_from": ["fer_hf/default_model", "outputs/a"], "distill_tta": "tencrop",
                         "distill_alpha": 0.7, "distill_temperature": 2.0, "class_weighting": "inverse_sqrt"})
    for fact in ("label smoothing 0.1", "random erasing p=0.25", "EMA of the weights (decay 0.9995",
                 "distilled from the ensemble of `fer_hf/default_model` as it was then; `outputs/a` as it was then, "
                 "tencrop views, alpha 0.7",
                 "class weighting `inverse_sqrt`"):
        assert fact in text, fact
    text = _ingredients({"mixup_alpha": 0.2, "cutmix_alpha": 0.0, "layer_decay": 0.75, "distill_from": ["a"],
                         "distill_alpha": 0.0})
    assert text == "mixup alpha 0.2 / cutmix alpha 0; layer-wise lr decay 0.75", text  # alpha 0: no distillation


@pytest.mark.parametrize("repo_id", ["bad id!!", "no_owner", "user/-name"])
def test_a_repo_id_the_hub_refuses_is_refused_by_the_dry_run_too(repo_id, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        push.main([str(tmp_path), "--repo_id", repo_id, "--dry_run"])
    assert stopped.value.code == 2 and f"--repo_id {repo_id!r}: give USER/NAME" in capsys.readouterr().err


def test_card_says_how_the_faces_were_resized_and_what_max_steps_ran(tmp_path):
    from fer_hf.report.model_card import write_model_card

    folder = tmp_path / "run"
    folder.mkdir()
    config = {"model_type": "timm_wrapper", "architecture": "resnet18", "num_classes": 7,
              "label_names": list(LABEL_NAMES), "pretrained_cfg": {"input_size": [3, 32, 32]}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "args.yaml").write_text("image_size: 32\nnum_train_epochs: 1\nmax_steps: 3\npretrained: false\n"
                                      "dataset: synthetic\n")
    (folder / "trainer_state.json").write_text(json.dumps({"epoch": 1.5, "global_step": 3, "log_history": []}))
    text = write_model_card(folder).read_text()
    assert "downscaled to 32 px" in text and "upscaled" not in text
    assert "| Epochs | 1.5 run (`max_steps` 3) |" in text and "planned" not in text
