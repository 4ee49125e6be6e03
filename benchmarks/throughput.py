"""Training and evaluation throughput of fer_hf against the model alone and against the usual per-image pipeline,
measured side by side in one run on one machine.

    python benchmarks/throughput.py --model resnet18 --image_size 48 [--device cpu|cuda] [--bf16] [--json OUT]

Measured, in rounds that interleave the three so that machine load hits them alike:
  (a) model alone: forward, loss, backward, gradient clipping and optimizer step (the Trainer's own optimizer and
      max_grad_norm) on random tensors already on the device; evaluation: forward passes. The ceiling.
  (b) fer_hf: the real Trainer loop (FerTrainer) over real FER-2013 through `fer_hf.data.pipeline.build_pipeline`, with
      the full training augmentation (RandomResizedCrop, flip, normalisation) or the evaluation transform.
  (c) baseline: the transformers image-classification example's pipeline (torchvision RandomResizedCrop / flip /
      ToTensor / Normalize per PIL image through `with_transform`, its collate_fn, default DataLoader settings)
      feeding the same model and Trainer.
Efficiency is (b)/(a), speed-up is (b)/(c), both per round, reported as median and range. Warm-up steps are not
timed. "Data alone" rows time the Trainer's own DataLoader and input preparation of (b) and (c) without the model:
the most images per second each pipeline could deliver. Rates are given per wall-clock second and, on a CPU, per
CPU-second of this process (steadier on a machine shared with other work).
`--loading` adds `benchmarks/loading.py` (CSV parse and cache load, each in a fresh process). `--smoke` runs a few
steps on synthetic faces, to keep the script working (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision import transforms as T
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loading import archive_path, format_loading, measure_loading, write_csv  # noqa: E402

from fer_hf.allocator import keep_freed_memory  # noqa: E402
from fer_hf.data.load import decode_faces, load_fer2013  # noqa: E402
from fer_hf.data.pipeline import build_pipeline, resolve_augment_on  # noqa: E402
from fer_hf.data.transforms import AugmentationConfig, image_mode  # noqa: E402
from fer_hf.labels import USAGE_TO_SPLIT  # noqa: E402
from fer_hf.modeling import build_model, image_processor_for  # noqa: E402
from fer_hf.trainer import FerTrainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- (c) the baseline


def baseline_datasets(dataset, processor, crop_scale_min: float) -> tuple[object, dict, Callable]:
    """The transformers image-classification example's transforms, applied per PIL image by `with_transform`."""
    config = processor.data_config
    size = config["input_size"][-1]
    mode = image_mode(processor)
    normalize = T.Normalize(mean=config["mean"], std=config["std"])
    train_transforms = T.Compose([T.RandomResizedCrop(size, scale=(crop_scale_min, 1.0)), T.RandomHorizontalFlip(),
                                  T.ToTensor(), normalize])
    val_transforms = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), normalize])

    def preprocess_train(example_batch):
        example_batch["pixel_values"] = [train_transforms(image.convert(mode)) for image in example_batch["image"]]
        return example_batch

    def preprocess_val(example_batch):
        example_batch["pixel_values"] = [val_transforms(image.convert(mode)) for image in example_batch["image"]]
        return example_batch

    def collate_fn(examples):
        pixel_values = torch.stack([example["pixel_values"] for example in examples])
        labels = torch.tensor([example["label"] for example in examples])
        return {"pixel_values": pixel_values, "labels": labels}

    evaluation = {split: part.with_transform(preprocess_val) for split, part in dataset.items()}
    return dataset["train"].with_transform(preprocess_train), evaluation, collate_fn


# ------------------------------------------------------------------------------------------------------ timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Images processed in a timed window, its wall-clock seconds and this process's CPU seconds (all threads)."""

    images: int
    wall: float
    cpu: float


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def elapsed(images: int, start: tuple[float, float]) -> Timing:
    wall, cpu = clock()
    return Timing(images, wall - start[0], cpu - start[1])


class WindowTimer(TrainerCallback):
    """Times `count` training steps (or prediction batches) after `warmup` of them; syncs the device only there."""

    def __init__(self, warmup: int, count: int, images_per_step: int, device: torch.device):
        self.warmup, self.count, self.images_per_step, self.device = warmup, count, images_per_step, device
        self.seen, self.start, self.timing = 0, None, None

    def _tick(self) -> None:
        self.seen += 1
        if self.seen in (self.warmup, self.warmup + self.count):
            synchronize(self.device)
            if self.seen == self.warmup:
                self.start = clock()
            else:
                self.timing = elapsed(self.images_per_step * self.count, self.start)

    def on_step_end(self, args, state, control, **kwargs):
        self._tick()

    def on_prediction_step(self, args, state, control, **kwargs):
        self._tick()


def training_arguments(args, output_dir: str, device: torch.device, num_workers: int, fast: bool) -> TrainingArguments:
    training_args = TrainingArguments(
        output_dir=output_dir,
        max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        optim=args.optim,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        max_grad_norm=args.max_grad_norm,
        logging_nan_inf_filter=False,  # as fer_hf.config sets it, for (b) and (c) alike: no host sync per step
        bf16=args.bf16,
        torch_compile=args.compile,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=num_workers,
        dataloader_pin_memory=device.type == "cuda",
        remove_unused_columns=False,
        use_cpu=device.type == "cpu",
    )
    if fast and training_args.dataloader_pin_memory:
        training_args.accelerator_config.non_blocking = True  # as fer_hf.train sets it
    return training_args


@dataclass
class Feed:
    """One way of feeding the Trainer: fer_hf's pipeline (b) or the baseline's (c)."""

    train: torch.utils.data.Dataset
    evaluation: torch.utils.data.Dataset
    collate: Callable
    device_transform: Callable | None
    num_workers: int
    fast: bool


def make_trainer(args, output_dir: str, model, feed: Feed, device: torch.device, callbacks=()) -> FerTrainer:
    training_args = training_arguments(args, output_dir, device, feed.num_workers, feed.fast)
    trainer = FerTrainer(model=model, args=training_args, train_dataset=feed.train, eval_dataset=feed.evaluation,
                         data_collator=feed.collate, callbacks=list(callbacks))
    trainer.device_transform = feed.device_transform
    trainer.remove_callback(PrinterCallback)  # its end-of-run metrics would bury the table
    return trainer


def fer_hf_feed(args, dataset, processor, device: torch.device, augment_on: str) -> Feed:
    """(b): fer_hf's own pipeline, as `fer_hf.train` builds it."""
    augmentation = AugmentationConfig(crop_scale=(args.crop_scale_min, 1.0))
    pipeline = build_pipeline(dataset, processor, augmentation, augment_on=augment_on, device=device,
                              channels_last=args.channels_last)
    return Feed(pipeline.train, pipeline.evaluation["validation"], pipeline.collate, pipeline.device_transform,
                args.num_workers, fast=True)


class SyncCounter(TrainerCallback):
    """Records the host-device synchronisations of `count` training steps after `warmup` (CUDA only), with torch's
    sync debug mode: each one stalls the CPU until the GPU has finished all the work launched so far."""

    def __init__(self, warmup: int, count: int):
        self.warmup, self.count = warmup, count
        self.records: list[warnings.WarningMessage] | None = None
        self._catcher: warnings.catch_warnings | None = None

    def on_step_end(self, args, state, control, **kwargs):
        # From the end of step `warmup` to the end of step `warmup + count`: each step with its batch fetch.
        if state.global_step == self.warmup:
            self._catcher = warnings.catch_warnings(record=True)
            self.records = self._catcher.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        elif state.global_step == self.warmup + self.count:
            self.stop()

    def stop(self) -> None:
        """End the window (also when the run fails inside it): sync debug mode and warning filters as they were."""
        if self._catcher is not None:
            torch.cuda.set_sync_debug_mode("default")
            self._catcher.__exit__(None, None, None)
            self._catcher = None


def host_syncs(args, model, feed: Feed, device: torch.device, steps: int = 5) -> dict:
    """Host syncs per training step of the Trainer loop over `feed` (the batch fetch included), and where they are."""
    steps = min(steps, args.steps - 1)  # the run's last step ends with syncs of its own (the final loss)
    counter = SyncCounter(args.warmup, steps)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            make_trainer(args, tmp, model, feed, device, [counter]).train()
        finally:
            counter.stop()
    records = [r for r in counter.records or [] if "synchroniz" in str(r.message)]
    sources = Counter(f"{Path(r.filename).name}:{r.lineno}" for r in records)
    return {"steps": steps, "per_step": len(records) / steps, "sources": dict(sources)}


def trainer_throughput(args, model, feed: Feed, device: torch.device, evaluate: bool) -> Timing:
    """The Trainer's training loop (or its evaluation loop) over the timed window."""
    warmup = args.eval_warmup if evaluate else args.warmup
    count = args.eval_batches if evaluate else args.steps
    timer = WindowTimer(warmup, count, args.eval_batch_size if evaluate else args.batch_size, device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(args, tmp, model, feed, device, [timer])
        if evaluate:
            trainer.evaluate()
        else:
            trainer.train()
    if timer.timing is None:
        raise RuntimeError(f"the timed window did not complete ({timer.seen} steps seen)")
    return timer.timing


def data_alone(args, model, feed: Feed, device: torch.device, evaluate: bool) -> Timing:
    """The Trainer's own DataLoader and input preparation (transfer, device transform) without the model: the most
    images per second the pipeline could ever deliver."""
    warmup = args.eval_warmup if evaluate else args.warmup
    count = args.eval_batches if evaluate else args.steps
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(args, tmp, model, feed, device)
        batches = iter(trainer.get_eval_dataloader() if evaluate else trainer.get_train_dataloader())
        for _ in range(warmup):
            trainer._prepare_inputs(next(batches))
        synchronize(device)
        start = clock()
        for _ in range(count):
            trainer._prepare_inputs(next(batches))
        synchronize(device)
        return elapsed(count * (args.eval_batch_size if evaluate else args.batch_size), start)


def model_alone_train(args, model, device: torch.device) -> Timing:
    """Forward, loss, backward, clipping and the Trainer's own optimizer step on random tensors on the device."""
    with tempfile.TemporaryDirectory() as tmp:
        training_args = training_arguments(args, tmp, device, 0, fast=True)
        trainer = Trainer(model=model, args=training_args)  # only to build the very optimizer (b) and (c) get
        optimizer = trainer.create_optimizer()
    model.to(device).train()
    step_model = torch.compile(model) if args.compile else model
    channels, size = model.config.pretrained_cfg["input_size"][0], model.config.pretrained_cfg["input_size"][-1]
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    pixels = torch.randn(args.batch_size, channels, size, size, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, model.config.num_labels, (args.batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()

    def step():
        with autocast:
            loss = step_model(pixel_values=pixels, labels=labels).loss
        loss.backward()
        if args.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    synchronize(device)
    start = clock()
    for _ in range(args.steps):
        step()
    synchronize(device)
    return elapsed(args.batch_size * args.steps, start)


def model_alone_eval(args, model, device: torch.device) -> Timing:
    model.to(device).eval()
    step_model = torch.compile(model) if args.compile else model
    channels, size = model.config.pretrained_cfg["input_size"][0], model.config.pretrained_cfg["input_size"][-1]
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    pixels = torch.randn(args.eval_batch_size, channels, size, size, device=device)
    pixels = pixels.contiguous(memory_format=memory_format)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()
    with torch.inference_mode():
        for _ in range(args.eval_warmup):
            with autocast:
                step_model(pixel_values=pixels)
        synchronize(device)
        start = clock()
        for _ in range(args.eval_batches):
            with autocast:
                step_model(pixel_values=pixels)
        synchronize(device)
    return elapsed(args.eval_batch_size * args.eval_batches, start)


# -------------------------------------------------------------------------------------------------- reporting


def dataset_to_csv(dataset, path: Path) -> Path:
    """Write a DatasetDict back out as fer2013.csv (its splits under their Usage names)."""
    parts = [(decode_faces(dataset[split]), np.asarray(dataset[split]["label"]), usage)
             for usage, split in USAGE_TO_SPLIT.items()]
    usage = np.concatenate([np.full(len(faces), name) for faces, _, name in parts])
    return write_csv(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), usage, path)


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def versions() -> dict:
    import accelerate
    import datasets
    import PIL
    import timm
    import torchvision
    import transformers

    found = {module.__name__: module.__version__
             for module in (torch, torchvision, transformers, timm, datasets, accelerate, PIL, np)}
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                                text=True, check=True).stdout.strip()
        found["fer_hf_commit"] = commit
    except (OSError, subprocess.CalledProcessError):
        pass
    return found


def format_table(result: dict, suffix: str = "") -> str:
    unit = "images per CPU-second of this process" if suffix else "images/s (wall clock)"
    lines = []
    for phase in ("train", "eval"):
        rows = result[phase + suffix]
        lines.append(f"{phase:<6} {unit}: median (min-max over rounds)")
        labels = {"model_alone": "(a) model alone", "fer_hf": "(b) fer_hf", "baseline": "(c) baseline"}
        labels |= {key: f"    fer_hf, augment_on={key.split(':', 1)[1]}" for key in rows if key.startswith("also:")}
        labels |= {"data_alone:fer_hf": "    data alone, fer_hf", "data_alone:baseline": "    data alone, baseline"}
        for name, label in labels.items():
            if name in rows:
                s = rows[name]
                lines.append(f"  {label:<34} {s['median']:10.1f}   ({s['min']:.1f}-{s['max']:.1f})")
        for ratio in ("efficiency", "speedup_vs_baseline"):
            key = f"{phase}_{ratio}{suffix}"
            spread = result[f"{key}_range"]
            lines.append(f"  {ratio.replace('_', ' '):<34} {result[key]:10.3f}   ({spread[0]:.3f}-{spread[1]:.3f})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="timm architecture (random init: speed only)")
    parser.add_argument("--image_size", type=int, default=48)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (TrainingArguments.bf16)")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile (TrainingArguments.torch_compile)")
    parser.add_argument("--augment_on", default="auto", help="fer_hf's pipeline for (b): auto, device or cpu")
    parser.add_argument("--also", default="", help="comma-separated extra augment_on modes to time as extra rows")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers for (b)")
    parser.add_argument("--baseline_num_workers", type=int, default=0, help="DataLoader workers for (c) (default 0)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--eval_batch_size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps before them")
    parser.add_argument("--eval_batches", type=int, default=10, help="timed evaluation batches per round")
    parser.add_argument("--eval_warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (a), (b), (c)")
    parser.add_argument("--optim", default="adamw_torch", help="the one optimizer of (a), (b) and (c)")
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="as the Trainer's default")
    parser.add_argument("--crop_scale_min", type=float, default=0.08)
    parser.add_argument("--dataset", default=None, help="fer2013.npz / .csv / folder (default: the real archive)")
    parser.add_argument("--loading", action="store_true", help="also time loading the CSV (benchmarks/loading.py)")
    parser.add_argument("--csv", type=Path, default=None, help="fer2013.csv for --loading (default: written)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--smoke", action="store_true", help="a few steps on synthetic faces (tests)")
    parser.add_argument("--page_faults", action="store_true",
                        help="on a CPU, leave glibc handing freed memory back (as fer_hf.train did before it kept it)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.dataset = args.dataset or "synthetic"
        args.batch_size, args.eval_batch_size, args.steps, args.warmup = 8, 16, 2, 1
        args.eval_batches, args.eval_warmup, args.repeats = 2, 1, 1
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as fer_hf.train sets it on a GPU, for (a), (b) and (c)
    # As fer_hf.train does on a CPU, for (a), (b) and (c); recorded, since it can be refused (fer_hf.allocator).
    kept_freed_memory = device.type == "cpu" and not args.page_faults and keep_freed_memory()
    torch.manual_seed(0)
    load_start = os.getloadavg()

    source = args.dataset or archive_path()
    if source is None:
        raise SystemExit("No FER-2013 archive found: pass --dataset or set FER2013_PATH (or use --smoke).")
    eval_count = args.eval_batch_size * (args.eval_warmup + args.eval_batches)
    dataset = load_fer2013(str(source), synthetic_train_size=max(512, args.batch_size * 4),
                           synthetic_eval_size=eval_count)
    if len(dataset["validation"]) < eval_count:
        raise SystemExit(f"validation has {len(dataset['validation'])} images; need {eval_count} for the eval window.")
    # Full batches only, so that every timed batch holds the same number of images.
    dataset["validation"] = dataset["validation"].select(range(eval_count))

    model = build_model(args.model, pretrained=False, image_size=args.image_size, crop_pct=1.0)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    processor = image_processor_for(model.config)

    feeds = {"fer_hf": fer_hf_feed(args, dataset, processor, device, args.augment_on)}
    feeds |= {f"also:{mode}": fer_hf_feed(args, dataset, processor, device, mode)
              for mode in filter(None, args.also.split(","))}
    base_train, base_eval, base_collate = baseline_datasets(dataset, processor, args.crop_scale_min)
    feeds["baseline"] = Feed(base_train, base_eval["validation"], base_collate, None, args.baseline_num_workers,
                             fast=False)

    timings: dict[str, dict[str, list[Timing]]] = {"train": {}, "eval": {}}
    for round_index in range(args.repeats):
        measured: dict[str, dict[str, Timing]] = {"train": {}, "eval": {}}
        for phase, evaluate in (("train", False), ("eval", True)):
            alone = model_alone_eval if evaluate else model_alone_train
            measured[phase]["model_alone"] = alone(args, model, device)
            for name, feed in feeds.items():
                measured[phase][name] = trainer_throughput(args, model, feed, device, evaluate)
            for name in ("fer_hf", "baseline"):
                measured[phase][f"data_alone:{name}"] = data_alone(args, model, feeds[name], device, evaluate)
        for phase, values in measured.items():
            for name, timing in values.items():
                timings[phase].setdefault(name, []).append(timing)
        rates = [f"{phase} {name} {t.images / t.wall:.1f}"
                 for phase, row in measured.items() for name, t in row.items()]
        print(f"round {round_index + 1}/{args.repeats}, images/s: {', '.join(rates)}", flush=True)

    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else f"main({argv})",
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "device": str(device), "fer_hf_augment_on": resolve_augment_on(args.augment_on, device),
                   "dataset": str(source), "train_images": len(dataset["train"]), "eval_images": eval_count,
                   "kept_freed_memory": kept_freed_memory},
        "machine": {**machine_info(device), "load_average_start": load_start},
        "versions": versions(),
    }
    # Wall clock is what a user waits for. Per CPU-second of this process is what the work costs: on a shared CPU it
    # moves far less with other people's load (meaningful with DataLoader workers = 0 only, as here by default).
    for suffix, rate in (("", lambda t: t.images / t.wall), ("_cpu_time", lambda t: t.images / t.cpu)):
        for phase in ("train", "eval"):
            rates = {name: [rate(t) for t in values] for name, values in timings[phase].items()}
            result[phase + suffix] = {name: summary(values) for name, values in rates.items()}
            a, b, c = rates["model_alone"], rates["fer_hf"], rates["baseline"]
            efficiency = [x / y for x, y in zip(b, a, strict=True)]
            speedup = [x / y for x, y in zip(b, c, strict=True)]
            result[f"{phase}_efficiency{suffix}"] = statistics.median(efficiency)
            result[f"{phase}_efficiency{suffix}_range"] = [min(efficiency), max(efficiency)]
            result[f"{phase}_speedup_vs_baseline{suffix}"] = statistics.median(speedup)
            result[f"{phase}_speedup_vs_baseline{suffix}_range"] = [min(speedup), max(speedup)]
    result["machine"]["load_average_end"] = os.getloadavg()
    if device.type == "cuda":
        result["host_syncs"] = {}
        for name in ("fer_hf", "baseline"):
            try:
                result["host_syncs"][name] = host_syncs(args, model, feeds[name], device)
            except Exception as error:  # a diagnostic: keep the figures above whatever happens here
                result["host_syncs"][name] = {"per_step": float("nan"), "sources": {"error": repr(error)}}

    if args.loading:
        with tempfile.TemporaryDirectory() as tmp:
            csv = args.csv
            if csv is None and args.smoke:  # a small CSV of the synthetic faces: the smoke run needs no archive
                csv = dataset_to_csv(dataset, Path(tmp) / "fer2013.csv")
            result["loading"] = measure_loading(csv)

    print(f"\n{args.model} at {args.image_size} px on {device} ({result['machine']['cpu']}"
          f"{', ' + result['machine']['gpu'] if 'gpu' in result['machine'] else ''}), bf16={args.bf16}, "
          f"batch {args.batch_size} / eval {args.eval_batch_size}, optimizer {args.optim}, "
          f"fer_hf augment_on={result['config']['fer_hf_augment_on']}")
    print(f"load average at start {load_start}, at end {result['machine']['load_average_end']}")
    print(format_table(result))
    if device.type == "cpu":
        print(format_table(result, "_cpu_time"))
    for name, syncs in result.get("host_syncs", {}).items():
        print(f"host syncs per training step, {name}: {syncs['per_step']:.1f} {syncs['sources']}")
    if "loading" in result:
        print(format_loading(result["loading"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
