"""A saved fer_hf model folder as a plain timm module, for inference: torch and timm, without transformers.

A folder holds transformers' `TimmWrapperForImageClassification`, whose forward is `timm_model(pixel_values)` and
whose weights are the timm module's under `timm_model.`. The same module built by timm from the folder's config and
loaded with the same tensors gives the same logits to the bit, and not importing transformers (its package and the
wrapper's modules) saves 0.7-1.2 s of every PyTorch start-up: a fifth of `predict --backend pytorch`'s loading, a
quarter of a one-photo run (`benchmarks/RESULTS.md`, issue 14). Unlike `from_pretrained`, which warns and initialises
weights missing from the file at random, a folder whose weights do not fit is refused: an inference head must never
be random. Training, release, export and the Hub keep the transformers model
(`fer_hf.modeling`); `tests/test_fast_inference.py` checks that both give the same logits.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fer_hf.model_files import (
    LEGACY_WEIGHTS_FILE,
    WEIGHTS_FILE,
    ModelFolderError,
    error_summary,
    label_names,
    read_model_config,
    weights_misfit,
)

WRAPPER_PREFIX = "timm_model."  # where TimmWrapperForImageClassification keeps the timm module's weights
# Packages `import timm` imports whenever they are installed, for timm's own training scripts, and inference never
# uses: timm.utils' summary imports wandb (an install of ours has it, for sweeps) to log runs, 0.4 s of the PyTorch
# backend's 2.9 s of loading on the 2-core VM.
NOT_FOR_INFERENCE = ("wandb",)


def load_timm_module(model_dir: str | os.PathLike, dtype=None):
    """(module in eval mode, the folder's config.json) for a saved model folder; `dtype`: a torch dtype, default
    float32 whatever the stored dtype (the shipped model keeps fp16 weights to stay small).

    The folder is checked first (`read_model_config`); weights that do not fit its config end in a
    `ModelFolderError` naming the folder, as `fer_hf.modeling.load_saved_model` reports them. A folder with only
    `pytorch_model.bin` is read with `torch.load(weights_only=True)` (transformers' default): a pickle cannot run code.
    """
    config = read_model_config(model_dir)
    model_dir = Path(model_dir)
    if not isinstance(config.get("pretrained_cfg"), dict):  # the data config: without it no input can be prepared
        raise ModelFolderError(f"{model_dir}: config.json has no pretrained_cfg (the input size, mean and std); the "
                               "folder was not saved by fer_hf.train or fer_hf.release.")
    timm = import_timm()
    import torch

    # As the wrapper builds it: its model_args, and a head for the labels (a stale num_classes in model_args aside).
    model_args = {key: value for key, value in (config.get("model_args") or {}).items() if key != "num_classes"}
    try:
        model = timm.create_model(config["architecture"], pretrained=False, num_classes=len(label_names(config)),
                                  **model_args)
    except (RuntimeError, TypeError, ValueError, AssertionError, KeyError) as err:  # one this timm does not know
        raise ModelFolderError(f"{model_dir}: timm {timm.__version__} cannot build its model ({error_summary(err)}); "
                               "upgrade timm (`pip install -U timm`) or check config.json.") from err
    try:
        if (model_dir / WEIGHTS_FILE).is_file():
            from safetensors.torch import load_file

            state = load_file(str(model_dir / WEIGHTS_FILE))
        else:
            state = torch.load(model_dir / LEGACY_WEIGHTS_FILE, map_location="cpu", weights_only=True)
        # Loaded into float32 parameters: fp16 tensors are widened exactly, as from_pretrained(dtype=float32) does.
        model.load_state_dict({key.removeprefix(WRAPPER_PREFIX): value for key, value in state.items()})
    except Exception as err:  # size mismatches, missing keys (RuntimeError), refused pickles (UnpicklingError)...
        raise weights_misfit(model_dir, err) from err
    if dtype is not None and dtype != torch.float32:
        model = model.to(dtype)
    return model.eval(), config


def import_timm():
    """timm with `timm.data`, imported without NOT_FOR_INFERENCE: where timm is not imported yet, those packages read
    as not installed for that one import (timm imports them under `try`), and import as usual afterwards. A package
    already imported is left as it is. Meant for the thread that loads the model, at start-up: an `import wandb` on
    another thread during timm's import would find it missing (predict starts its threads after loading)."""
    if "timm.data" in sys.modules:
        return sys.modules["timm"]
    hidden = [name for name in NOT_FOR_INFERENCE if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # `import name` raises ImportError
    try:
        import timm
        import timm.data  # noqa: F401
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return timm


def data_config_of(config: dict) -> dict:
    """The folder's evaluation data config (input size, interpolation, crop, mean, std), computed as the model's
    image processor computes it (`TimmWrapperImageProcessor`: timm's `resolve_data_config` on its pretrained_cfg)."""
    return import_timm().data.resolve_data_config(config.get("pretrained_cfg") or {}, model=None, verbose=False)
