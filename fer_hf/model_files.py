"""What a saved fer_hf model folder holds, and its check, without importing torch or transformers.

`predict --help` and the ONNX Runtime path read model folders through this module only, so they start in about a
second instead of the several seconds torch, timm and transformers take to import.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fer_hf.labels import LABEL_NAMES

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LEGACY_WEIGHTS_FILE = "pytorch_model.bin"
# The model fer_hf ships (weights stored in fp16 to stay small, loaded in fp32): what predict, evaluate and the demo
# use when no --model is given. Written by `python -m fer_hf.release`; its card says how it was trained and measured.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"


class ModelFolderError(ValueError):
    """A folder that is not a usable fer_hf model: the message names it and says what is wrong."""


def error_summary(err: BaseException) -> str:
    """`Type: first line of the message` (300 characters at most): a library's error inside one of ours."""
    return f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"


def weights_misfit(model_dir: str | os.PathLike, err: BaseException) -> ModelFolderError:
    """What both loaders (transformers' and the plain timm module) say of weights they cannot put in the model."""
    return ModelFolderError(f"{model_dir}: the weights do not fit its config.json ({error_summary(err)}).")


def read_model_config(model_dir: str | os.PathLike) -> dict:
    """The config.json of a saved fer_hf model folder (`fer_hf.train`'s output_dir, a checkpoint, the shipped model),
    after checking the folder is one.

    What users really have (a folder of another model, a half-copied or truncated weights file, a head for other
    labels) ends in a `ModelFolderError` naming the folder, not in a traceback from deep inside a loader.
    """
    from safetensors import SafetensorError, safe_open

    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ModelFolderError(f"{model_dir}: not a saved model folder (no config.json); give the output_dir of "
                               f"`fer_hf.train` or a checkpoint-* folder inside it.")
    try:
        config = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"{config_path}: not valid JSON ({err}); the folder was not fully copied?") from err
    if isinstance(config, dict) and "model_type" not in config and "architecture" in config:
        # timm's save_for_hf folder (what `python -m fer_hf.weights` writes): a backbone with its ImageNet head.
        raise ModelFolderError(f"{model_dir}: timm's {config['architecture']} with its ImageNet head, not a FER "
                               f"model; fine-tune it first (`python -m fer_hf.train --model_name_or_path {model_dir} "
                               "--pretrained true ...`) and give that run's output_dir.")
    if not isinstance(config, dict) or config.get("model_type") != "timm_wrapper":
        found = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise ModelFolderError(f"{model_dir}: holds a {found!r} model, not a timm model saved by fer_hf "
                               f"(model_type timm_wrapper).")
    names = label_names(config)
    if names != list(LABEL_NAMES) or config.get("num_classes", len(names)) != len(names):
        raise ModelFolderError(f"{model_dir}: its labels are {names}, not FER-2013's {list(LABEL_NAMES)}; "
                               f"fer_hf models classify the seven FER-2013 expressions in that order.")
    weights = model_dir / WEIGHTS_FILE
    if weights.is_file():
        try:
            # safetensors reports a file it may not read as missing ("No such file or directory"): ask the OS first.
            open(weights, "rb").close()
        except PermissionError as err:
            raise ModelFolderError(f"cannot read {weights}: permission denied; make it readable (chmod) or copy the "
                                   f"model again.") from err
        except OSError as err:
            raise ModelFolderError(f"cannot read {weights}: {err.strerror or err}.") from err
        try:
            with safe_open(str(weights), framework="numpy") as handle:  # reads the header only
                handle.keys()
        except (SafetensorError, OSError) as err:
            raise ModelFolderError(f"{weights}: truncated or corrupt ({err}); copy or download the model again.") \
                from err
    elif not (model_dir / LEGACY_WEIGHTS_FILE).is_file():
        raise ModelFolderError(f"{model_dir}: no weights (model.safetensors); the folder was not fully copied, or "
                               f"training stopped before saving. Checkpoints inside it hold weights too.")
    return config


def label_names(config: dict) -> list[str]:
    """The label names of a model config, in class order. TimmWrapperConfig saves them as `label_names` (and
    `num_classes`); other writers use id2label."""
    names = config.get("label_names") or [name for _, name in sorted((config.get("id2label") or {}).items(),
                                                                      key=lambda item: int(item[0]))]
    return [str(name).lower() for name in names]
