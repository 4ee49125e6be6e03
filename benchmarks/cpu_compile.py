"""Eager against `torch.compile` for one training step of the CPU recipes' network, side by side in one run.

    OMP_NUM_THREADS=2 python benchmarks/cpu_compile.py [--model tf_efficientnet_lite0] [--size 64] [--batch 64]

One step: forward, cross-entropy, backward and AdamW on a random batch (timm's network at random init: the weights
do not change the time). Prints the median of 15 steps after 3 warm-up steps (the compiled model's warm-up includes
compiling) for each mode, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import timm
import torch


def step_seconds(model: torch.nn.Module, compiled: bool, size: int, batch: int) -> tuple[float, float]:
    """(warm-up seconds, median step seconds)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    run = torch.compile(model) if compiled else model
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 7, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(run(images), labels).backward()
        optimizer.step()

    start = time.perf_counter()
    for _ in range(3):
        step()
    warm_up = time.perf_counter() - start
    times = []
    for _ in range(15):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return warm_up, statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    result = {"model": args.model, "size": args.size, "batch": args.batch, "threads": torch.get_num_threads()}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = timm.create_model(args.model, num_classes=7).train()
        warm_up, median = step_seconds(model, compiled, args.size, args.batch)
        name = "compiled" if compiled else "eager"
        result[name] = {"warm_up_s": round(warm_up, 1), "step_ms": round(1000 * median, 1),
                        "images_per_s": round(args.batch / median, 1)}
    result["compiled_over_eager"] = round(result["compiled"]["images_per_s"] / result["eager"]["images_per_s"], 3)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
