"""Shared fixtures. Tests run offline on CPU: random-init models, synthetic or real FER-2013 from ../shared."""

from __future__ import annotations

import os

# Set before transformers / huggingface_hub / wandb are imported anywhere: they read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FER2013 = REPO.parent / "shared" / "data" / "fer2013"


def fer2013_archive() -> Path | None:
    """The real archive from FER2013_PATH (file or folder), else ../shared/data/fer2013; None if absent."""
    candidate = Path(os.environ.get("FER2013_PATH", DEFAULT_FER2013))
    if candidate.is_dir():
        candidate = candidate / "fer2013.npz"
    return candidate if candidate.is_file() else None


@pytest.fixture(scope="session")
def fer2013_path() -> Path:
    path = fer2013_archive()
    if path is None:
        pytest.skip(
            f"real FER-2013 archive not found (set FER2013_PATH to fer2013.npz or its folder; looked in "
            f"{os.environ.get('FER2013_PATH', DEFAULT_FER2013)})"
        )
    return path


@pytest.fixture(scope="session")
def fer2013(fer2013_path, tmp_path_factory):
    """The real FER-2013 as a DatasetDict (parsed once per session into a temporary cache)."""
    from fer_hf.data import load_fer2013

    return load_fer2013(str(fer2013_path), cache_dir=tmp_path_factory.mktemp("fer_cache"))


TINY_TRAIN_ARGS = [
    "--model_name_or_path", "resnet18", "--pretrained", "false", "--dataset", "synthetic",
    "--synthetic_train_size", "700", "--synthetic_eval_size", "140", "--image_size", "48",
    "--crop_scale_min", "0.5", "--num_train_epochs", "3", "--per_device_train_batch_size", "32",
    "--per_device_eval_batch_size", "128", "--optim", "adamw_torch", "--learning_rate", "0.002",
    "--lr_scheduler_type", "linear", "--eval_strategy", "epoch", "--save_strategy", "epoch",
    "--save_total_limit", "1", "--load_best_model_at_end", "true", "--metric_for_best_model", "accuracy",
    "--logging_steps", "5", "--report_to", "none", "--seed", "0", "--disable_tqdm", "true",
]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A small ResNet-18 trained by `fer_hf.train.main` on synthetic faces; its output_dir (model, metrics, state)."""
    from fer_hf.train import main

    output_dir = tmp_path_factory.mktemp("trained_run")
    main([*TINY_TRAIN_ARGS, "--output_dir", str(output_dir)])
    return output_dir
