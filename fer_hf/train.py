"""Fine-tune a timm ResNet on FER-2013 with the Hugging Face Trainer.

    accelerate launch -m fer_hf.train --config configs/quickstart.yaml
    accelerate launch -m fer_hf.train --config configs/paper_resnet50.yaml --dataset PATH_OR_HUB_ID

The validation split (PublicTest) picks the checkpoint; the test split (PrivateTest) is evaluated once, at the end.
"""

# ruff: noqa: E402  (the imports follow the check below, which must run before any of them)
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a file (`python fer_hf/train.py`, W&B's default sweep command): its folder, first on sys.path, would
    # put fer_hf/evaluate.py in place of the `evaluate` package. Run as the module it is.
    import runpy

    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runpy.run_module("fer_hf.train", run_name="__main__", alter_sys=True)
    raise SystemExit(0)

import contextlib
import json
import logging
from pathlib import Path

import datasets
import torch
import transformers
from transformers import set_seed

from fer_hf import cli
from fer_hf.allocator import keep_freed_memory
from fer_hf.config import parse_args, save_arguments
from fer_hf.data.load import load_fer2013
from fer_hf.data.pipeline import build_pipeline
from fer_hf.data.transforms import AugmentationConfig
from fer_hf.hub import HubAccessError, check_push_access
from fer_hf.ingredients import build_mixup, class_weights
from fer_hf.metrics import compute_metrics, reported_metrics
from fer_hf.modeling import build_model, image_processor_for
from fer_hf.report.figures import plot_training_curves
from fer_hf.report.model_card import write_model_card
from fer_hf.run_dir import (
    ARGS_FILE,
    RUN_INFO_FILE,
    TEACHER_FILE,
    agent_run_output_dir,
    check_run_folder,
    check_writable,
    checkpoints,
    exclusive,
    read_json,
    resolve_resume_checkpoint,
    run_info,
    start_info,
    write_atomic,
)
from fer_hf.trainer import FerTrainer, evaluate_split

logger = logging.getLogger(__name__)


def _weights(records: list) -> list:
    """The weights' SHA-256 of recorded teachers, in order: what says whether they are still the same models."""
    return [record.get("weights_sha256") if isinstance(record, dict) else record for record in records]


def main(argv: list[str] | None = None) -> dict[str, float]:
    argv = sys.argv[1:] if argv is None else list(argv)
    model_args, data_args, training_args = parse_args(argv)
    metric, reported = training_args.metric_for_best_model, reported_metrics()
    if metric is not None and metric.removeprefix("eval_") not in reported:
        # transformers would find out at the first evaluation, with a KeyError, after training up to it
        raise ValueError(f"--metric_for_best_model {metric}: not a metric the evaluation reports; choose from "
                         f"{', '.join(reported[:7])} or a per-class one (f1_happy, ...).")
    # A W&B sweep agent gives every run the same command line: each run gets its own output_dir/<run id>.
    training_args.output_dir = agent_run_output_dir(training_args.output_dir)
    if training_args.push_to_hub:  # refused before anything is written
        check_push_access(training_args.hub_model_id or Path(training_args.output_dir).name, training_args.hub_token)
    # One run per output_dir at a time (the main process holds it): a second start is refused, not interleaved.
    held = contextlib.nullcontext()
    if training_args.should_save:
        check_run_folder(training_args.output_dir)
        held = exclusive(training_args.output_dir, "fer_hf.train")
    with held:
        return run(model_args, data_args, training_args, command=["python", "-m", "fer_hf.train", *argv])


def run(model_args, data_args, training_args, command: list[str]) -> dict[str, float]:
    """Train, choose the checkpoint on the validation split, test once; write the run folder (`fer_hf.run_dir`)."""
    # ---- logging: info on the main process only
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=[logging.StreamHandler()])
    log_level = training_args.get_process_log_level()
    for lib_logger in (logger, logging.getLogger("fer_hf")):
        lib_logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    set_seed(training_args.seed)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and training_args.distributed_state.distributed_type == "NO":
        # Several processes on CPU are not distributed for accelerate unless asked: each would train alone on its
        # shard, unsynchronised, and evaluate only its share of each split.
        raise SystemExit(f"fer_hf.train: started as {os.environ['WORLD_SIZE']} processes without a GPU; add "
                         "`--use_cpu true` so they train as one run (gloo), or start one process.")
    # Before any data or model is loaded: a bad --resume_from_checkpoint fails at once.
    resume_from = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    if resume_from:
        logger.info("Resuming from %s", resume_from)
    elif checkpoints(training_args.output_dir):
        logger.warning("%s already holds checkpoints of an earlier run; this run starts afresh beside them. To "
                       "continue that run instead, pass --resume_from_checkpoint last.", training_args.output_dir)
    output_dir = Path(training_args.output_dir)  # writable: `exclusive` in main checked it
    if training_args.should_save:
        info = run_info(command, data_args.dataset)
        # A resumed run keeps the start it recorded: the folder it began from may have changed since (a release).
        earlier = read_json(output_dir / RUN_INFO_FILE) if resume_from else {}
        if "start" in earlier:
            start = earlier["start"]
        else:
            start = start_info(model_args.model_name_or_path) if model_args.pretrained else None
        if start:
            info["start"] = start
        if model_args.distill_from and model_args.distill_alpha:
            # The teachers as they are now (their targets are checked against these weights, and computed again if
            # they changed); folders such as fer_hf/default_model change at each release, so the card needs this.
            teachers = [start_info(teacher) or {"path": str(teacher)} for teacher in model_args.distill_from]
            info["teachers"] = teachers
            if isinstance(earlier.get("teachers"), list) and _weights(earlier["teachers"]) != _weights(teachers):
                logger.warning("The teachers' weights changed since this run started (%s): the epochs before this "
                               "resume learnt from the earlier ones; %s records both.",
                               ", ".join(map(str, model_args.distill_from)), RUN_INFO_FILE)
                info["teachers_before_resume"] = earlier["teachers"]
            elif earlier.get("teachers_before_resume"):
                info["teachers_before_resume"] = earlier["teachers_before_resume"]
        write_atomic(output_dir / RUN_INFO_FILE, json.dumps(info, indent=2) + "\n")
    # `with_transform` hands Trainer an `image` column the model does not take; keep it for the transform.
    training_args.remove_unused_columns = False
    if training_args.device.type == "cpu":
        training_args.dataloader_pin_memory = False  # pinning needs an accelerator; on CPU it only warns
        keep_freed_memory()  # else every step page-faults its activations in again (fer_hf.allocator)
    elif training_args.dataloader_pin_memory:
        training_args.accelerator_config.non_blocking = True  # copy the next batch while the GPU computes
    if training_args.device.type == "cuda" and not training_args.full_determinism:
        torch.backends.cudnn.benchmark = True  # one input size all run long: let cuDNN time its kernels once

    # ---- data: FER-2013 (or synthetic) with train / validation / test
    dataset = load_fer2013(
        data_args.dataset,
        validation_fraction=data_args.validation_fraction,
        seed=training_args.seed,
        skip_bad_rows=data_args.skip_bad_rows,
        synthetic_train_size=data_args.synthetic_train_size,
        synthetic_eval_size=data_args.synthetic_eval_size,
    )
    for split, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples),
                         ("test", data_args.max_eval_samples)):
        if limit is not None:
            dataset[split] = dataset[split].select(range(min(limit, len(dataset[split]))))
    label_names = dataset["train"].features["label"].names
    logger.info("Splits: %s", {split: len(part) for split, part in dataset.items()})
    teacher_probs = None
    if model_args.distill_from:
        if data_args.mixup_alpha > 0 or data_args.cutmix_alpha > 0:
            raise ValueError("--distill_from does not combine with mixup / cutmix: a mixed image has no teacher "
                             "target. Set --mixup_alpha 0 --cutmix_alpha 0, or distil without them.")
        from fer_hf.inference.teacher import teacher_probabilities  # ONNX Runtime / the classifier: only when asked

        with training_args.main_process_first(desc="teacher targets"):
            probs = teacher_probabilities(model_args.distill_from, dataset["train"], tta=model_args.distill_tta,
                                          cache=output_dir / TEACHER_FILE)
        teacher_probs = torch.from_numpy(probs)

    # ---- model and its image processor (mean/std/size from the backbone's timm data config)
    model = build_model(
        model_args.model_name_or_path,
        pretrained=model_args.pretrained,
        in_chans=model_args.in_chans,
        image_size=data_args.image_size,
        crop_pct=data_args.crop_pct,
        cache_dir=model_args.cache_dir,
    )
    processor = image_processor_for(model.config)
    # Each checkpoint holds the weights, the optimizer's state (two moments for Adam) and, with an EMA, raw weights.
    parameters = sum(p.numel() for p in model.parameters())
    check_writable(output_dir, needed_bytes=16 * parameters * ((training_args.save_total_limit or 3) + 1))
    augmentation = AugmentationConfig(crop_scale=(data_args.crop_scale_min, 1.0), hflip=data_args.hflip)
    if data_args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Per-image PIL transforms, or the same transforms on whole uint8 batches in the DataLoader or on the device.
    pipeline = build_pipeline(dataset, processor, augmentation, augment_on=data_args.augment_on,
                              device=training_args.device, channels_last=data_args.channels_last,
                              reprob=data_args.reprob, remode=data_args.remode, recount=data_args.recount,
                              teacher_probs=teacher_probs)
    evaluation = pipeline.evaluation

    # ---- ingredients beyond the paper, each off unless asked for (random erasing is in the pipeline above)
    mixup = build_mixup(mixup_alpha=data_args.mixup_alpha, cutmix_alpha=data_args.cutmix_alpha,
                        prob=data_args.mixup_prob, switch_prob=data_args.mixup_switch_prob,
                        label_smoothing=training_args.label_smoothing_factor, num_classes=len(label_names))
    weights = class_weights(dataset["train"].with_format("numpy")["label"], label_names, data_args.class_weighting)
    if weights is not None:
        logger.info("Class weights (%s): %s", data_args.class_weighting,
                    dict(zip(label_names, [round(w, 3) for w in weights.tolist()], strict=True)))

    # ---- train; the best epoch on `eval_split` is restored at the end (load_best_model_at_end)
    trainer = FerTrainer(
        model=model,
        args=training_args,
        train_dataset=pipeline.train,
        eval_dataset=evaluation[data_args.eval_split],
        data_collator=pipeline.collate,
        compute_metrics=compute_metrics,
        mixup=mixup,
        class_weights=weights,
        layer_decay=model_args.layer_decay,
        model_ema_decay=model_args.model_ema_decay if model_args.model_ema else None,
        model_ema_warmup=model_args.model_ema_warmup,
        distill_alpha=model_args.distill_alpha,
        distill_temperature=model_args.distill_temperature,
    )
    trainer.device_transform = pipeline.device_transform
    if trainer.is_world_process_zero():
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        save_arguments(Path(training_args.output_dir) / ARGS_FILE, model_args, data_args, training_args)
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()

    # ---- the chosen checkpoint on the selection split, then the test split once
    results = dict(train_result.metrics)
    results |= evaluate_split(trainer, evaluation[data_args.eval_split], "eval", data_args.eval_split, label_names)
    results |= evaluate_split(trainer, evaluation["test"], "test", "test", label_names)

    # ---- the figures and the model card (README.md) beside the model, from the files just written
    if trainer.is_world_process_zero():
        plot_training_curves(training_args.output_dir)
        write_model_card(training_args.output_dir, repo_id=training_args.hub_model_id)

    if training_args.push_to_hub:  # FerTrainer.create_model_card keeps our card; checkpoints are not uploaded
        trainer.push_to_hub(finetuned_from=model_args.model_name_or_path, dataset="FER-2013")
    return results


if __name__ == "__main__":
    # A bad recipe or flag, data file, model name or output_dir ends in `fer_hf.train: <what is wrong>`, not a
    # traceback (run with --log_level debug to see one).
    with cli.exit_on_bad_input("fer_hf.train", errors=(*cli.INPUT_ERRORS, HubAccessError)):
        main(sys.argv[1:])
