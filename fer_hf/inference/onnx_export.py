"""A saved model folder to an ONNX file, and the cache that lets the `auto` backend run a folder on ONNX Runtime.

The graph takes `pixel_values` (batch, C, H, W), normalised as the model's image processor does, and returns
`logits` (batch, 7). The model's config.json and its resolved timm data config are embedded in the file's metadata,
so the file runs without the folder, and without torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from fer_hf.hashing import update_from_file, weights_sha256
from fer_hf.model_files import CONFIG_FILE, LEGACY_WEIGHTS_FILE, WEIGHTS_FILE, read_model_config

logger = logging.getLogger(__name__)

ONNX_CONFIG_KEY = "fer_hf.config"  # metadata entry of an exported .onnx holding the model's config.json
ONNX_DATA_CONFIG_KEY = "fer_hf.data_config"  # ... and its resolved timm data config (size, crop, mean, std)
ONNX_WEIGHTS_KEY = "fer_hf.weights_sha256"  # ... and the SHA-256 of the weights file it was exported from
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
# Part of every cache key: bump it when what export_onnx writes changes, so older cached files are not reused.
CACHE_FORMAT = "fer_hf-onnx-2"
CACHE_PARITY_TOLERANCE = 1e-3  # max abs logit difference on random inputs before a cached export is trusted


class ExportParityError(RuntimeError):
    """ONNX Runtime's logits differ from PyTorch's by more than the tolerance."""


def export_onnx(model_dir: str | os.PathLike, onnx_path: str | os.PathLike, opset: int = DEFAULT_OPSET,
                model=None) -> Path:
    """Write `onnx_path` from a saved model folder (or its already loaded transformers model, `load_saved_model`'s:
    not the timm module of a PyTorch `FerClassifier`): dynamic batch axis,
    config and data config embedded in the metadata. The file appears whole or not at all."""
    import onnx
    import torch

    from fer_hf.modeling import image_processor_for, load_saved_model

    class LogitsOnly(torch.nn.Module):  # the transformers model returns a ModelOutput; ONNX wants a plain tensor
        def __init__(self, model: torch.nn.Module):
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values=pixel_values).logits

    config = read_model_config(model_dir)
    model = model if model is not None else load_saved_model(model_dir, dtype=torch.float32)
    data_config = image_processor_for(model.config).data_config
    channels, height, width = data_config["input_size"]
    example = torch.zeros(2, channels, height, width, device=next(model.parameters()).device)
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    # Exported and checked beside the target, then renamed over it: a kill never leaves half an .onnx file.
    partial = onnx_path.with_name(f".{onnx_path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        # torch's exporter reports its progress with print(); stdout may be a JSON answer (`predict --json`).
        with contextlib.redirect_stdout(sys.stderr):
            torch.onnx.export(
                LogitsOnly(model).eval(),
                (example,),
                str(partial),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch", min=1, max=4096)}},
                opset_version=opset,
                dynamo=True,
                verbose=False,
                external_data=False,  # one self-contained file; a ResNet-50 is ~100 MB, far below protobuf's 2 GB
            )
        exported = onnx.load(str(partial))
        onnx.checker.check_model(exported)
        embedded = [(ONNX_CONFIG_KEY, json.dumps(config)), (ONNX_DATA_CONFIG_KEY, json.dumps(_jsonable(data_config)))]
        if (weights := weights_sha256(model_dir)) is not None:
            embedded.append((ONNX_WEIGHTS_KEY, weights))
        for key, value in embedded:
            entry = exported.metadata_props.add()
            entry.key, entry.value = key, value
        exported.doc_string = (f"fer_hf FER-2013 classifier exported from {Path(model_dir).name}: pixel_values -> "
                               "logits")
        onnx.save(exported, str(partial))
        os.replace(partial, onnx_path)
    finally:
        partial.unlink(missing_ok=True)
    return onnx_path


def written_opset(onnx_path: str | os.PathLike) -> int | None:
    """The default domain's opset an .onnx file declares (torch's exporter keeps its own where it cannot convert
    down to the one asked for, and only logs why)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def _jsonable(data_config: dict) -> dict:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in data_config.items()}


# ----------------------------------------------------------------------------------------------------- the cache


def cache_dir() -> Path:
    """FER_HF_CACHE, else $XDG_CACHE_HOME/fer_hf, else ~/.cache/fer_hf."""
    if os.environ.get("FER_HF_CACHE"):
        return Path(os.environ["FER_HF_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "fer_hf"
    home = Path(os.path.expanduser("~"))  # stays "~" where no home can be found (a uid without a passwd entry)
    return (home if home.is_absolute() else Path(tempfile.gettempdir())) / ".cache" / "fer_hf"


def cache_key(model_dir: str | os.PathLike, opset: int = DEFAULT_OPSET) -> str:
    """A digest of what the export depends on: the folder's config and weights (by content, so a retrained folder
    at the same path gets a new file), the opset, the export format and the versions of the libraries exporting."""
    # The exporting libraries' versions too: a timm or torch upgrade may change the graph or the data config.
    versions = "|".join(f"{name}{_version(name)}" for name in ("torch", "timm", "transformers"))
    digest = hashlib.sha256(f"{CACHE_FORMAT}|opset{opset}|{versions}|".encode())
    for name in (CONFIG_FILE, WEIGHTS_FILE, LEGACY_WEIGHTS_FILE):
        path = Path(model_dir) / name
        if path.is_file():
            digest.update(name.encode())
            update_from_file(digest, path)
    return digest.hexdigest()[:24]


def cache_target(model_dir: str | os.PathLike, opset: int = DEFAULT_OPSET) -> Path:
    """Where the export of `model_dir` is (or goes): `cache_dir()/onnx/NAME-KEY.onnx`; where that folder cannot be
    written, the same name under the system's temporary folder (kept across runs until it is cleaned)."""
    name = f"{Path(model_dir).resolve().name}-{cache_key(model_dir, opset)}.onnx"
    # The user id, not getpass.getuser(): that fails in containers run as a uid with no passwd entry.
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    folders = [cache_dir() / "onnx", Path(tempfile.gettempdir()) / f"fer_hf-{user}" / "onnx"]
    for i, folder in enumerate(folders):
        if (folder / name).is_file():
            return folder / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".probe.{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as err:
            if i == len(folders) - 1:
                raise OSError(f"no writable folder for the ONNX export ({err}); set FER_HF_CACHE to one") from err
            logger.warning("%s: cannot write the ONNX cache (%s); using %s (set FER_HF_CACHE to a writable folder "
                           "to choose).", folder, err, folders[i + 1])
            continue
        return folder / name
    raise AssertionError("unreachable")


def cached_onnx(model_dir: str | os.PathLike, opset: int = DEFAULT_OPSET) -> Path:
    """The ONNX export of `model_dir`, made on first use (and checked against PyTorch on random inputs) and kept in
    the cache (`cache_target`); later calls only hash the folder."""
    target = cache_target(model_dir, opset)
    if target.is_file():
        return target
    missing = [name for name in ("onnx", "onnxscript", "torch") if importlib.util.find_spec(name) is None]
    if missing or _version("torch") < (2, 6):
        raise ImportError(f"exporting to ONNX needs onnx, onnxscript and torch >= 2.6 (missing or too old: "
                          f"{', '.join(missing) or 'torch ' + importlib.metadata.version('torch')}); "
                          "pip install 'fer_hf[onnx]'")
    logger.warning("%s: first run on ONNX Runtime: exporting it once (seconds), cached as %s", model_dir, target)
    import onnxruntime
    import torch

    from fer_hf.modeling import load_saved_model

    model = load_saved_model(model_dir, dtype=torch.float32)
    # Exported and checked under another name, then renamed: the cache only ever holds checked files.
    unchecked = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.unchecked")
    try:
        export_onnx(model_dir, unchecked, opset, model=model)
        channels, height, width = model.config.pretrained_cfg["input_size"]
        pixels = np.random.default_rng(0).standard_normal((3, channels, height, width), dtype=np.float32)
        with torch.inference_mode():
            reference = model(pixel_values=torch.from_numpy(pixels)).logits.numpy()
        session = onnxruntime.InferenceSession(str(unchecked), providers=["CPUExecutionProvider"])
        difference = float(np.abs(session.run(None, {INPUT_NAME: pixels})[0] - reference).max())
        if not difference < CACHE_PARITY_TOLERANCE:
            raise ExportParityError(f"the ONNX export's logits differ from PyTorch's by {difference:.2e}")
        os.replace(unchecked, target)
    finally:
        unchecked.unlink(missing_ok=True)
    return target


def _version(package: str) -> tuple[int, ...]:
    """A package's release as numbers ((2, 6) for 2.6.0+cu124), from its metadata: nothing is imported."""
    try:
        release = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(part) for part in re.findall(r"\d+", release.split("+")[0])[:2])
