"""CPU time of one optimizer step with the arithmetic taken out: every parameter of the model is replaced by a
2-element-per-axis tensor of the same rank, so what remains is the per-operation overhead (Python, dispatch) that a
GPU step pays on the CPU whatever the tensor sizes.

    python benchmarks/optimizer_overhead.py --models resnet18 resnet50
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
from transformers.optimization import Adafactor


def shrunken_parameters(model_name: str) -> list[torch.nn.Parameter]:
    with torch.device("meta"):  # the shapes only; no memory, no init
        model = timm.create_model(model_name, num_classes=7)
    params = [torch.nn.Parameter(torch.randn(*[2] * p.dim())) for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def seconds_per_step(optimizer: torch.optim.Optimizer, steps: int) -> float:
    optimizer.step()  # state initialisation is not timed
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)
    results = {}
    for name in args.models:
        params = shrunken_parameters(name)
        # As the Trainer builds them: --optim adafactor (scale_parameter and relative_step off) and adamw_torch.
        optimizers = {
            "adafactor": Adafactor(params, lr=1e-3, scale_parameter=False, relative_step=False, warmup_init=False),
            # torch picks foreach for CUDA tensors by default, the for-loop for CPU ones: force the GPU's choice.
            "adamw_torch": torch.optim.AdamW(params, lr=1e-3, foreach=True),
        }
        results[name] = {key: seconds_per_step(opt, args.steps) for key, opt in optimizers.items()}
        row = ", ".join(f"{key} {1e3 * s:.1f} ms" for key, s in results[name].items())
        print(f"{name} ({len(params)} parameters): {row} per step")
    return results


if __name__ == "__main__":
    main()
