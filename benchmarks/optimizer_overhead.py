"""Time of one optimizer step: transformers' Adafactor (one weight at a time), fer_hf's batched Adafactor
(`fer_hf.adafactor.ForeachAdafactor` with `foreach=True`) and torch's AdamW (foreach), side by side, on a timm
model's weights.

    python benchmarks/optimizer_overhead.py [--models resnet18 resnet50] [--device cpu|cuda] [--full_size]
        [--json OUT]

By default every weight is shrunk to 2 elements an axis (same rank), so what remains is the per-operation overhead
(Python, dispatch) that a GPU step pays on the host whatever the tensor sizes; `--full_size` keeps the real weights
(the arithmetic and memory traffic too). Steps alternate between the optimizers, medians of `--steps`. It also counts
the tensor operations one step dispatches (torch's dispatcher: a `_foreach_*` call counts once; on a GPU the ones that
mix shapes still launch a kernel per weight; views are not counted), and how far the two Adafactors' weights are
apart after the same steps (0 on a CPU: the same arithmetic).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.optimization import Adafactor

from fer_hf.adafactor import ForeachAdafactor


def shrunken_parameters(model_name: str, device: str = "cpu") -> list[torch.nn.Parameter]:
    with torch.device("meta"):  # the shapes only; no memory, no init
        model = timm.create_model(model_name, num_classes=7)
    params = [torch.nn.Parameter(torch.randn(*[2] * p.dim(), device=device)) for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def full_size_parameters(model_name: str, device: str = "cpu") -> list[torch.nn.Parameter]:
    model = timm.create_model(model_name, num_classes=7).to(device)
    params = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
    for p in params:
        p.grad = 1e-3 * torch.randn_like(p)
    return params


def seconds_per_step(optimizers: dict[str, torch.optim.Optimizer], steps: int, device: str) -> dict[str, float]:
    """Median seconds of a step of each optimizer, their steps alternated (state initialisation not timed)."""
    for optimizer in optimizers.values():
        optimizer.step()
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(steps):
        for name, optimizer in optimizers.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            optimizer.step()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.name().split("::")[-1].split(".")[0] not in ("detach", "alias", "view", "unsqueeze", "t"):
            self.count += 1  # views launch nothing
        return func(*args, **(kwargs or {}))


def ops_per_step(optimizer: torch.optim.Optimizer) -> int:
    with _CountOps() as counter:
        optimizer.step()
    return counter.count


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full_size", action="store_true", help="the real weights, not shrunk ones")
    parser.add_argument("--json", default=None, help="Also write the results here.")
    args = parser.parse_args(argv)
    make = full_size_parameters if args.full_size else shrunken_parameters
    results = {}
    for name in args.models:
        # Each optimizer its own copy of the weights: the same start, whatever the others did.
        weights = make(name, args.device)

        def copy(weights=weights) -> list[torch.nn.Parameter]:
            out = [torch.nn.Parameter(w.detach().clone()) for w in weights]
            for new, old in zip(out, weights, strict=True):
                new.grad = old.grad.clone()
            return out

        # As the Trainer builds them: --optim adafactor (scale_parameter and relative_step off) and adamw_torch.
        adafactor = dict(lr=1e-3, scale_parameter=False, relative_step=False, warmup_init=False)
        optimizers = {
            "adafactor": Adafactor(copy(), **adafactor),
            "adafactor_foreach": ForeachAdafactor(copy(), **adafactor, foreach=True),
            # torch picks foreach for CUDA tensors by default, the for-loop for CPU ones: force the GPU's choice.
            "adamw_torch": torch.optim.AdamW(copy(), lr=1e-3, foreach=True),
        }
        results[name] = {key: round(1e3 * s, 3) for key, s in seconds_per_step(optimizers, args.steps,
                                                                                args.device).items()}
        results[name] = {f"{key}_ms": value for key, value in results[name].items()}
        results[name].update({f"{key}_ops": ops_per_step(opt) for key, opt in optimizers.items()})
        results[name]["weights"] = len(weights)
        # Both Adafactors took the same steps from the same weights with the same gradients: how far apart they are.
        pairs = zip(optimizers["adafactor"].param_groups[0]["params"],
                    optimizers["adafactor_foreach"].param_groups[0]["params"], strict=True)
        results[name]["adafactor_foreach_max_abs_difference"] = max((a - b).abs().max().item() for a, b in pairs)
        print(f"{name} ({len(weights)} weights{', full size' if args.full_size else ', shrunk'}, {args.device}): "
              + ", ".join(f"{key} {value}" for key, value in results[name].items() if key != "weights"))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "full_size": args.full_size,
                                               "steps": args.steps, "torch": torch.__version__,
                                               "models": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
