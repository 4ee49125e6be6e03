"""Export a saved model to ONNX (dynamic batch axis) and check it against PyTorch on real faces.

    python -m fer_hf.export outputs/paper_resnet50 --onnx resnet50_fer.onnx --dataset fer2013.npz

The graph takes `pixel_values` (batch, C, H, W), normalised as the model's image processor does, and returns
`logits` (batch, 7). The model's config.json and timm data config are embedded in the file's metadata, so
`python -m fer_hf.predict photo.jpg --onnx resnet50_fer.onnx` needs nothing else. The export fails unless ONNX
Runtime's logits match PyTorch's to within --tolerance on the given images.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_hf import cli
from fer_hf.inference.classifier import FerClassifier, load_classifier, view_logits
from fer_hf.inference.onnx_export import DEFAULT_OPSET, ExportParityError, export_onnx, written_opset
from fer_hf.labels import SPLITS

logger = logging.getLogger(__name__)


def check_parity(
    torch_model: FerClassifier, onnx_model: FerClassifier, faces: list, tolerance: float = 1e-4
) -> float:
    """Max abs logit difference between the two backends on `faces` (run as one batch and one at a time, so the
    dynamic batch axis is exercised); raises ExportParityError above `tolerance`."""
    reference = view_logits(torch_model, faces)[:, 0]
    batched = view_logits(onnx_model, faces, batch_size=len(faces))[:, 0]
    single = view_logits(onnx_model, faces[:2], batch_size=1)[:, 0]
    difference = max(float(np.abs(reference - batched).max()), float(np.abs(reference[:2] - single).max()))
    if difference >= tolerance:
        raise ExportParityError(
            f"ONNX Runtime's logits differ from PyTorch's by up to {difference:.2e} (tolerance {tolerance:g}); try "
            "another --opset, or report the model and versions."
        )
    return difference


@dataclass
class ExportArguments:
    onnx: str = field(metadata={"help": "The .onnx file to write."})
    dataset: str = field(
        default="synthetic",
        metadata={"help": "Faces for the parity check: fer2013.csv / .npz / folder / Hub id (real faces), or "
                  "`synthetic`."},
    )
    split: str = field(default="test", metadata={"help": "Split of --dataset the parity check draws from."})
    num_images: int = field(default=64, metadata={"help": "Faces in the parity check."})
    tolerance: float = field(default=1e-4, metadata={"help": "Largest allowed max abs logit difference."})
    opset: int = field(default=DEFAULT_OPSET, metadata={"help": "ONNX opset version."})

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {SPLITS}, got {self.split!r}.")
        if self.num_images < 1:
            raise ValueError(f"--num_images must be at least 1 (the parity check needs faces), got {self.num_images}.")
        if not self.tolerance > 0:
            raise ValueError(f"--tolerance must be above 0, got {self.tolerance}.")


def main(argv: list[str] | None = None) -> float:
    parser = cli.make_parser("fer_hf.export", __doc__, ExportArguments)
    parser.add_argument("model_dir", help="A saved model folder (training output_dir or a checkpoint-*).")
    args, extra = cli.parse(parser, argv)
    if Path(args.onnx).is_dir():  # checked before the export's seconds, not when its file is renamed into place
        parser.error(f"--onnx {args.onnx}: is a folder; name the file to write, e.g. {Path(args.onnx) / 'model.onnx'}")
    cli.setup_logging(fer_hf_level=logging.WARNING)
    from fer_hf.data.load import load_fer2013

    target = Path(args.onnx)
    # Exported under a temporary name beside the target and renamed only once the parity check has passed: a file
    # at --onnx is always one that passed it.
    unchecked = target.with_name(f".{target.stem}.{os.getpid()}.unchecked{target.suffix}")
    try:
        with cli.exit_on_bad_input("fer_hf.export"):  # model folder, dataset, opset: each message names the fix
            torch_model = load_classifier(extra.model_dir, device="cpu", backend="pytorch")
            part = load_fer2013(args.dataset, splits=(args.split,))[args.split]  # before the export's seconds
            export_onnx(extra.model_dir, unchecked, args.opset)  # the transformers model, as the cache exports
            if (written := written_opset(unchecked)) != args.opset:
                raise ValueError(f"torch's exporter could not write opset {args.opset} for this model (it wrote "
                                 f"{written}; its log above says why); use --opset {written}.")
        faces = [example["image"] for example in part.select(range(min(args.num_images, len(part))))]
        onnx_model = load_classifier(onnx_path=unchecked)
        try:
            difference = check_parity(torch_model, onnx_model, faces, args.tolerance)
        except ExportParityError as err:
            raise SystemExit(f"fer_hf.export: {target}: not written: {err}") from err
        with cli.exit_on_bad_input("fer_hf.export"):  # the target turned into a folder meanwhile, the disk...
            path = Path(unchecked.replace(target))
    finally:
        unchecked.unlink(missing_ok=True)
    print(f"Wrote {path} ({path.stat().st_size / 1e6:.1f} MB; dynamic batch axis; opset {args.opset}).")
    print(f"Parity on {len(faces)} {args.dataset} {args.split} faces: max abs logit difference {difference:.2e} "
          f"(< {args.tolerance:g}).")
    return difference


if __name__ == "__main__":
    main(sys.argv[1:])
