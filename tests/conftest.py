"""Shared fixtures. Tests run offline on CPU: random-init models, synthetic or real FER-2013 from ../shared."""

from __future__ import annotations

import os
import tempfile

# Set before transformers / huggingface_hub / wandb are imported anywhere: they read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The ONNX exports of the `auto` backend are cached per test session (its subprocesses share it), not in ~/.cache.
os.environ.setdefault("FER_HF_CACHE", tempfile.mkdtemp(prefix="fer_hf_test_cache_"))

import importlib  # noqa: E402
import json  # noqa: E402
import struct  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import NoReturn  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FER2013 = REPO.parent / "shared" / "data" / "fer2013"


# --------------------------------------------------------------------------- what a test needs but may not have
# Locally a missing prerequisite (the real archive, an optional package) skips its tests with the reason, which
# `-ra` lists at the end. In CI (`CI=true`, as GitHub Actions and .ci/run set it) it fails the run instead: a
# green CI run has run every test.


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test (or the module, when called at import time) locally; fail it in CI."""
    if in_ci():
        pytest.fail(f"{reason} [CI=true: a missing prerequisite is an error, not a skip]", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_module(name: str, install: str) -> ModuleType:
    """`pytest.importorskip` that fails in CI; `install` says how to get the module."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        skip_or_fail(f"{name} is not importable ({error}); {install}")


def fer2013_archive() -> Path | None:
    """The real archive from FER2013_PATH (file or folder), else ../shared/data/fer2013; None if absent."""
    candidate = Path(os.environ.get("FER2013_PATH", DEFAULT_FER2013))
    if candidate.is_dir():
        candidate = candidate / "fer2013.npz"
    return candidate if candidate.is_file() else None


def require_fer2013() -> Path:
    path = fer2013_archive()
    if path is None:
        skip_or_fail(
            f"real FER-2013 archive not found (set FER2013_PATH to fer2013.npz or its folder; looked in "
            f"{os.environ.get('FER2013_PATH', DEFAULT_FER2013)})"
        )
    return path


def _no_skips_in_ci(report):
    """In CI a skip that did not come through `skip_or_fail` (a bare `pytest.skip`, a `skipif` mark) fails too."""
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome, report.longrepr = "failed", f"skipped in CI (CI=true): {reason}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    return _no_skips_in_ci((yield))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    return _no_skips_in_ci((yield))


@pytest.fixture(scope="session")
def fer2013_path() -> Path:
    return require_fer2013()


@pytest.fixture(scope="session")
def fer2013(fer2013_path, tmp_path_factory):
    """The real FER-2013 as a DatasetDict (parsed once per session into a temporary cache)."""
    from fer_hf.data.load import load_fer2013

    return load_fer2013(str(fer2013_path), cache_dir=tmp_path_factory.mktemp("fer_cache"))


# Eileen Collins' face in scikit-image's astronaut.png (512x512), as x, y, w, h.
ASTRONAUT_FACE = (177, 67, 93, 93)


def center_inside(box, reference=ASTRONAUT_FACE, scale=1.0) -> bool:
    """The box's centre lies in `reference` and its side is about the reference's (box divided by `scale` first)."""
    x, y, w, h = (v / scale for v in box)
    rx, ry, rw, rh = reference
    return rx <= x + w / 2 <= rx + rw and ry <= y + h / 2 <= ry + rh and 0.6 * rw <= w <= 1.8 * rw


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


def wandb_history(run: Path) -> dict[str, list]:
    """Every logged value per key of a W&B offline run folder (`wandb/offline-run-*`), in logging order.

    The `.wandb` file is a LevelDB-style log (7-byte headers, 32 KiB blocks) of protobuf `Record`s; wandb dropped its
    Python reader for these files (the Go core writes them), so the test reads the format itself.
    """
    wandb_internal_pb2 = require_module("wandb.proto.wandb_internal_pb2", "the wandb extra: pip install -e .[wandb]")
    data = next(run.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    block, header, position = 32768, 7, 7  # the file opens with b":W&B", a 2-byte magic and a 1-byte version
    history: dict[str, list] = {}
    pending = b""
    while position + header <= len(data):
        if block - position % block < header:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position:position + header])
        chunk = data[position + header:position + header + length]
        position += header + length
        pending = chunk if kind in (1, 2) else pending + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                for item in record.history.item:
                    history.setdefault(item.key or "/".join(item.nested_key), []).append(json.loads(item.value_json))
    return history
