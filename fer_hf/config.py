"""Argument dataclasses and the parser: a YAML recipe gives defaults, the command line overrides them.

Field names are the stock `TrainingArguments` names wherever one exists (`learning_rate`, `optim`, ...), so a sweep
parameter, a YAML key and a command-line flag are the same word.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import functools
import json
import logging
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from transformers import HfArgumentParser, TrainingArguments

from fer_hf.labels import SPLITS, TtaMode
from fer_hf.run_dir import write_atomic

logger = logging.getLogger(__name__)

# Where images are cropped, flipped, resized and normalised; see DataArguments.augment_on.
AugmentOn = Literal["auto", "device", "cpu", "per_sample"]
AUGMENT_ON: tuple[str, ...] = get_args(AugmentOn)
# How the cross-entropy weights the classes; see DataArguments.class_weighting.
ClassWeighting = Literal["none", "inverse_sqrt", "inverse"]
CLASS_WEIGHTING: tuple[str, ...] = get_args(ClassWeighting)
# What random erasing fills its box with (timm's RandomErasing modes); see DataArguments.remode.
RandomErasingMode = Literal["pixel", "rand", "const"]
RANDOM_ERASING_MODES: tuple[str, ...] = get_args(RandomErasingMode)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="timm/resnet18.a1_in1k",
        metadata={"help": "timm architecture (`resnet18`), Hub checkpoint (`timm/resnet50.a1_in1k`) or local folder."},
    )
    pretrained: bool = field(
        default=True,
        metadata={"help": "Load the checkpoint's weights (Hub or local). `false` trains from random init, offline."},
    )
    in_chans: int = field(
        default=3,
        metadata={"help": "3: grayscale duplicated to RGB (the paper). 1: grayscale input, first conv adapted."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are cached."})
    # ---- fine-tuning ingredients beyond the paper, each off by default (fer_hf.ingredients, fer_hf.trainer)
    layer_decay: float | None = field(
        default=None,
        metadata={"help": "Layer-wise learning-rate decay (timm's param_groups_layer_decay, e.g. 0.75): the head "
                  "trains at --learning_rate, each block group below it at this factor times the one above; weight "
                  "decay then skips 1-d parameters (biases, norms), as in timm. Unset: one learning rate."},
    )
    model_ema: bool = field(
        default=False,
        metadata={"help": "Keep an exponential moving average of the weights (timm's ModelEmaV3), updated after each "
                  "optimizer step. The EMA weights are what is evaluated during training, chosen as the best "
                  "checkpoint, saved and tested; checkpoints keep the raw weights beside them to resume."},
    )
    model_ema_decay: float = field(
        default=0.999, metadata={"help": "EMA decay per optimizer step (0.999 averages over about 1000 steps)."}
    )
    model_ema_warmup: bool = field(
        default=False,
        metadata={"help": "Ramp the EMA decay up from 0 (timm's warmup: 1 - (1 + step) ** -2/3, capped at "
                  "--model_ema_decay), so early weights are forgotten fast."},
    )

    # ---- knowledge distillation from saved models (fer_hf.inference.teacher, fer_hf.ingredients)
    distill_from: list[str] | None = field(
        default=None,
        metadata={"help": "Teacher model folder(s) (training output_dirs, or fer_hf/default_model): before training, "
                  "their class probabilities on every training image are computed once (averaged over "
                  "--distill_tta views and over the teachers, as `fer_hf.evaluate --model A B --tta` does) and "
                  "saved in output_dir; the student then learns from them as well as from the labels (Hinton et "
                  "al.'s soft targets). Unset: no distillation."},
    )
    distill_alpha: float = field(
        default=0.5, metadata={"help": "Weight of the teacher's term in the loss; the labels' cross-entropy gets "
                                       "1 - alpha (1: the teacher alone)."}
    )
    distill_temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature of the teacher term (its KL divergence is scaled by T^2)."}
    )
    distill_tta: TtaMode = field(
        default="tencrop", metadata={"help": "Views the teachers' probabilities average: none, hflip or tencrop."}
    )

    def __post_init__(self):
        if not 0 <= self.distill_alpha <= 1:
            raise ValueError(f"--distill_alpha must be in [0, 1], got {self.distill_alpha}.")
        if self.distill_temperature <= 0:
            raise ValueError(f"--distill_temperature must be > 0, got {self.distill_temperature}.")
        if self.in_chans not in (1, 3):
            raise ValueError(f"--in_chans must be 1 or 3, got {self.in_chans}.")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"--layer_decay must be in (0, 1] (unset: one learning rate), got {self.layer_decay}.")
        if not 0 <= self.model_ema_decay < 1:
            raise ValueError(f"--model_ema_decay must be in [0, 1), got {self.model_ema_decay}.")


@dataclass
class DataArguments:
    dataset: str = field(
        default="synthetic",
        metadata={"help": "fer2013.csv, fer2013.npz (or its folder), a Kaggle image folder, a Hub id or `synthetic`."},
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Input resolution (paper: 224; FER native: 48). Default: the backbone's."}
    )
    crop_pct: float | None = field(
        default=1.0,
        metadata={"help": "Evaluation centre-crop fraction; 1.0 keeps the whole (already cropped) face. "
                  "Omit in YAML / set null to keep the backbone's."},
    )
    crop_scale_min: float = field(
        default=0.08, metadata={"help": "Smallest area fraction RandomResizedCrop samples (torchvision: 0.08)."}
    )
    hflip: float = field(default=0.5, metadata={"help": "Probability of a horizontal flip in training."})
    augment_on: AugmentOn = field(
        default="auto",
        metadata={"help": "Where faces are cropped, flipped, resized and normalised: `device` (whole uint8 batches on "
                  "the training device), `cpu` (whole batches in the DataLoader), `per_sample` (timm's PIL transforms "
                  "one image at a time, as the transformers example does) or `auto` (device on a GPU, else cpu)."},
    )
    channels_last: bool = field(
        default=False, metadata={"help": "Feed the model channels-last (NHWC) batches and weights (faster on GPU)."}
    )
    eval_split: str = field(
        default="validation",
        metadata={"help": "Split evaluated each epoch to pick the best checkpoint (`train` for the overfit check)."},
    )
    validation_fraction: float = field(
        default=0.1, metadata={"help": "Share of train held out as validation where the source has none."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training images."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N validation and test images (quick runs)."}
    )
    skip_bad_rows: bool = field(
        default=False,
        metadata={"help": "Skip malformed CSV rows / unreadable images (count logged) instead of failing."},
    )
    synthetic_train_size: int = field(default=3000, metadata={"help": "`synthetic`: training images drawn."})
    synthetic_eval_size: int = field(default=600, metadata={"help": "`synthetic`: validation and test images each."})
    # ---- training ingredients beyond the paper, each off by default (fer_hf.ingredients, fer_hf.data.pipeline)
    mixup_alpha: float = field(
        default=0.0,
        metadata={"help": "Mixup of training batches with lambda ~ Beta(alpha, alpha) (timm's Mixup; timm recipes use "
                  "0.8); the loss becomes timm's SoftTargetCrossEntropy and --label_smoothing_factor smooths the "
                  "mixed targets. 0: off."},
    )
    cutmix_alpha: float = field(
        default=0.0,
        metadata={"help": "CutMix of training batches with lambda ~ Beta(alpha, alpha) (timm's Mixup; timm recipes "
                  "use 1.0). 0: off."},
    )
    mixup_prob: float = field(
        default=1.0, metadata={"help": "Probability that a training batch is mixed when mixup or cutmix is on."}
    )
    mixup_switch_prob: float = field(
        default=0.5, metadata={"help": "Probability of CutMix instead of mixup for a batch when both are on."}
    )
    reprob: float = field(
        default=0.0,
        metadata={"help": "Random erasing: probability that a training image gets a random box erased after "
                  "normalisation (timm's RandomErasing; timm recipes use 0.25). 0: off."},
    )
    remode: RandomErasingMode = field(
        default="pixel",
        metadata={"help": "Random erasing fill: `pixel` (per-pixel normal noise), `rand` (one normal colour per box) "
                  "or `const` (zeros)."},
    )
    recount: int = field(default=1, metadata={"help": "Random erasing: up to this many boxes per erased image."})
    class_weighting: ClassWeighting = field(
        default="none",
        metadata={"help": "Weight the cross-entropy by class: `none`, or `inverse_sqrt` / `inverse` frequency of the "
                  "training split's labels, normalised to mean 1 (FER-2013's Disgust is 1.5%% of Training). Applies "
                  "with label smoothing and mixup too, and to eval_loss."},
    )

    def __post_init__(self):
        if self.image_size is not None and self.image_size < 1:
            # 0 is not "unset" (None is): taken as unset it trained at the backbone's size without a word.
            raise ValueError(f"--image_size must be a positive integer (leave it unset for the backbone's default), "
                             f"got {self.image_size}.")
        if self.eval_split not in SPLITS:
            raise ValueError(f"--eval_split must be one of {SPLITS}, got {self.eval_split!r}.")
        if self.eval_split == "test":
            raise ValueError(
                "--eval_split test would choose the checkpoint on the split that is reported as test (PrivateTest); "
                "choose it on `validation` (PublicTest), or on `train` for the overfit check."
            )
        if not 0 < self.crop_scale_min <= 1:
            raise ValueError(f"--crop_scale_min must be in (0, 1], got {self.crop_scale_min}.")
        if not 0 <= self.hflip <= 1:
            raise ValueError(f"--hflip must be a probability in [0, 1], got {self.hflip}.")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"--validation_fraction must be in (0, 1), got {self.validation_fraction}.")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0 (0 turns it off), got {getattr(self, name)}.")
        for name in ("mixup_prob", "mixup_switch_prob", "reprob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{name} must be a probability in [0, 1], got {getattr(self, name)}.")
        if self.recount < 1:
            raise ValueError(f"--recount must be >= 1, got {self.recount}.")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1 (or left out for the whole split), got "
                                 f"{getattr(self, name)}.")
        for name in ("synthetic_train_size", "synthetic_eval_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}.")


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainingArguments)
# Where fer_hf's TrainingArguments defaults differ from transformers' (see make_parser).
FER_HF_TRAINING_DEFAULTS = {"logging_nan_inf_filter": False}


def make_parser() -> HfArgumentParser:
    # No abbreviations: `--learning_rat` must be refused as a typo, as an unknown recipe or sweep key is, not taken
    # for `--learning_rate`.
    parser = HfArgumentParser(ARGUMENT_CLASSES, allow_abbrev=False)
    # transformers' default checks every step's loss for NaN/inf with a Python `if` on a device tensor: a host sync
    # per step, which on a GPU stalls the queue of kernels the CPU has launched ahead. A NaN is then logged as NaN.
    parser.set_defaults(**FER_HF_TRAINING_DEFAULTS)
    parser.add_argument("--config", default=None, help="YAML recipe (configs/*.yaml); command-line flags override it.")
    return parser


def argument_names(parser: HfArgumentParser | None = None) -> set[str]:
    """Every key a recipe, a sweep or the command line may set."""
    parser = parser or make_parser()
    return {action.dest for action in parser._actions if action.dest not in ("help", "config")}


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a key given twice in one mapping (yaml keeps the last one without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice (the first on line {seen[key].line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """YAML's safe subset, with a key given twice refused."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  (a SafeLoader subclass)


def read_recipe(path: str | Path, parser: HfArgumentParser | None = None) -> dict[str, Any]:
    """Read a YAML recipe and check that every key is a real argument and every value fits its type."""
    path = Path(path)
    parser = parser or make_parser()
    if path.is_dir():
        raise IsADirectoryError(f"--config {path}: is a folder; give a .yaml recipe file.")
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file.")
    try:
        recipe = load_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); save "
                         "the recipe as UTF-8.") from err
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: {_yaml_problem(err)}") from err
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe is a mapping of argument names to values, got {type(recipe).__name__}.")
    unknown = sorted(set(recipe) - argument_names(parser))
    if unknown:
        raise ValueError(f"{path}: unknown argument(s) {unknown}; see `python -m fer_hf.train --help`.")
    not_nullable = sorted(key for key, value in recipe.items() if value is None and not _takes_none(key))
    if not_nullable:
        raise ValueError(f"{path}: {', '.join(not_nullable)}: null is not a value these arguments take; give a "
                         "value, or delete the line to keep the default.")
    single = {action.dest for action in parser._actions if action.nargs in (None, "?")}
    # (A one-item list is that item: args.yaml writes report_to so.)
    listed = sorted(key for key, value in recipe.items() if isinstance(value, list) and len(value) > 1
                    and key in single)
    if listed:
        raise ValueError(f"{path}: {', '.join(listed)}: takes one value, not a list.")
    wrong = [problem for key, value in recipe.items() if (problem := _value_problem(parser, key, value))]
    if wrong:
        raise ValueError(f"{path}: {'; '.join(wrong)}.")
    return recipe


def _yaml_problem(err: yaml.YAMLError) -> str:
    """yaml's complaint with the line and column it points at (1-based, as editors count), without its traceback."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = ", ".join(part for part in (getattr(err, "context", None), getattr(err, "problem", None)) if part)
    return f"{where}not valid YAML ({what or err})."


def _value_problem(parser: HfArgumentParser, key: str, value: Any) -> str | None:
    """What the parser would say about a recipe value, naming the key rather than the flag; None if it fits.

    Recipe values reach the parser as command-line tokens, so its own message would read as a command-line mistake;
    each token is converted here as argparse converts it (the action's type, then its choices).
    """
    action = next(action for action in parser._actions if action.dest == key)
    for token in _recipe_tokens(value):
        try:
            converted = action.type(token) if action.type is not None else token
        except argparse.ArgumentTypeError as err:  # e.g. string_to_bool's own message
            return f"{key}: {str(err).rstrip('.')}"
        except (TypeError, ValueError):
            return f"{key}: invalid {getattr(action.type, '__name__', repr(action.type))} value {token!r}"
        if action.choices is not None and converted not in action.choices:
            return f"{key}: invalid choice {token!r} (choose from {', '.join(map(str, action.choices))})"
    return None


@functools.cache
def _field_types() -> dict[str, Any]:
    types: dict[str, Any] = {}
    for cls in ARGUMENT_CLASSES:  # no name is declared twice: the parser would refuse it
        try:
            types.update(typing.get_type_hints(cls))
        except (NameError, TypeError):  # an annotation this Python cannot resolve: say nothing about its fields
            continue
    return types


def _takes_none(name: str) -> bool:
    """Whether the argument's declared type admits None (a YAML null)."""
    hint = _field_types().get(name, Any)
    return hint is Any or type(None) in get_args(hint)


def recipe_to_argv(recipe: dict[str, Any]) -> list[str]:
    """Turn a recipe into command-line tokens so YAML and CLI values go through the same type conversion."""
    argv: list[str] = []
    for key, value in recipe.items():
        tokens = _recipe_tokens(value)
        if tokens:
            argv += [f"--{key}", *tokens]
    return argv


def _recipe_tokens(value: Any) -> list[str]:
    """The command-line tokens that spell one recipe value after its flag; none for a null or an empty list."""
    if value is None or value == []:  # an empty list cannot be spelled as flags; the parser default stands
        return []
    if isinstance(value, dict):  # e.g. lr_scheduler_kwargs: the parser reads dicts as JSON
        return [json.dumps(value)]
    values = value if isinstance(value, list) else [value]
    return [str(v).lower() if isinstance(v, bool) else str(v) for v in values]


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Parse `--config recipe.yaml` plus overrides (later flags win) into the three argument dataclasses."""
    parser = make_parser()
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # `--conf x` is not `--config x` either
    pre.add_argument("--config", default=None, action="append")
    known, rest = pre.parse_known_args(argv)
    tokens = list(rest)
    if known.config is not None:
        if len(known.config) > 1:
            raise ValueError(f"--config is given {len(known.config)} times ({', '.join(known.config)}); give one "
                             "recipe and override its values with flags.")
        known.config = known.config[0]
        if not known.config.strip():
            raise ValueError("--config is empty; give a .yaml recipe file, or leave --config out.")
    if known.config:
        recipe = read_recipe(known.config, parser)
        # YAML nulls cannot be spelled on a command line; they become parser defaults instead.
        parser.set_defaults(**{k: v for k, v in recipe.items() if v is None})
        tokens = recipe_to_argv(recipe) + tokens
    # The parser also returns a namespace holding `--config` (not a dataclass field) before the leftovers.
    try:
        *outputs, leftover = parser.parse_args_into_dataclasses(args=tokens, return_remaining_strings=True)
    except TypeError as err:  # transformers builds nested configs from dict values: AcceleratorConfig(**{"": 0})
        where = f"{known.config}: " if known.config else ""
        raise ValueError(f"{where}an argument's value does not fit its type ({err}).") from err
    if leftover:
        parser.error(f"unrecognized arguments: {' '.join(leftover)}")
    model_args, data_args, training_args = outputs[: len(ARGUMENT_CLASSES)]
    _check_training_values(training_args)
    if "--model_ema_decay" in tokens and not model_args.model_ema:
        logger.warning("--model_ema_decay is given but --model_ema is off: no EMA of the weights is kept.")
    if training_args.max_steps > 0 and "--num_train_epochs" in tokens:
        # transformers' rule (max_steps wins) is kept, since smoke runs shorten a recipe this way; said, not silent.
        logger.warning("--max_steps %d overrides num_train_epochs %g: training stops after %d optimizer steps.",
                       training_args.max_steps, training_args.num_train_epochs, training_args.max_steps)
    return model_args, data_args, training_args


def _check_training_values(training_args: TrainingArguments) -> None:
    """What transformers accepts and only fails on later (a NaN loss at once, or a meaningless one)."""
    if not math.isfinite(training_args.learning_rate) or training_args.learning_rate < 0:
        raise ValueError(f"--learning_rate must be a finite number >= 0, got {training_args.learning_rate}.")
    if not 0 <= training_args.label_smoothing_factor < 1:
        raise ValueError(f"--label_smoothing_factor must be in [0, 1), got {training_args.label_smoothing_factor}.")


def merged_arguments(*args_objects) -> dict[str, Any]:
    """All parsed arguments as one flat, YAML-safe dict (no secrets) that `--config` accepts back."""
    names = argument_names()
    merged: dict[str, Any] = {}
    for obj in args_objects:
        values = obj.to_dict() if isinstance(obj, TrainingArguments) else dataclasses.asdict(obj)
        for key, value in values.items():
            if key in names and not key.endswith("_token"):
                merged[key] = value.value if isinstance(value, enum.Enum) else value
    return merged


def save_arguments(path: str | Path, *args_objects) -> None:
    write_atomic(path, yaml.safe_dump(merged_arguments(*args_objects), sort_keys=True))
