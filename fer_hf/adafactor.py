"""transformers' Adafactor (the paper's optimizer) with its arithmetic batched across weights on a GPU.

`transformers.optimization.Adafactor.step` updates one weight at a time: about 19 tensor operations per weight
(ResNet-50: 161 weights, 3,010 operations a step, counted by `benchmarks/optimizer_overhead.py`), each a kernel
launch on a GPU and a dispatch on the host whatever the weight's size. `ForeachAdafactor` runs the same operations, in
the same order and with the same arguments, on all of a group's weights at once with torch's `_foreach_*` functions
where they apply (the elementwise steps, the norms): 241 calls a step for ResNet-50; the reductions over a weight's
rows and columns and the broadcasts stay per weight. With the batched path forced on a CPU the weights and state
equal transformers' to the bit (`tests/test_adafactor.py`); on a GPU torch's multi-tensor kernels may round a norm's
last bit differently. The state dict is the same, so checkpoints move between the two.

`foreach=None` (the default) batches only where the weights are on a GPU, as torch's own optimizers choose: on a CPU,
where there is no launch to save, one weight at a time keeps each weight in the cache through its ~19 operations and
is faster (`benchmarks/RESULTS.md`). transformers' own `step` also runs for `scale_parameter` (its learning rate
reads each weight's RMS on the host), 16-bit weights or gradients, sparse gradients and weights on several devices.
`fer_hf.trainer.FerTrainer` uses it for `--optim adafactor`.
"""

from __future__ import annotations

import inspect
import math

import torch
from transformers.optimization import Adafactor


class ForeachAdafactor(Adafactor):
    """`transformers.optimization.Adafactor`, same arguments and state, plus `foreach` (None: batched on a GPU only;
    True: wherever it applies; False: never); see the module docstring."""

    def __init__(self, params, *args, foreach: bool | None = None, **kwargs):
        super().__init__(params, *args, **kwargs)
        self.foreach = foreach

    def _batchable(self) -> bool:
        if self.foreach is False:
            return False
        devices = set()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["scale_parameter"] or p.grad.is_sparse or p.dtype != torch.float32 \
                        or p.grad.dtype != torch.float32:
                    return False
                devices.add(p.device)
        return len(devices) <= 1 and (self.foreach or all(device.type == "cuda" for device in devices))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():  # as torch's optimizers call it (transformers' runs it under no_grad)
                loss = closure()
        if not self._batchable():
            # transformers' own step, without the hooks torch wraps around every optimizer class's `step`: this
            # call's wrapper has run them already.
            inspect.unwrap(Adafactor.step)(self)
            return loss
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                self._init_state(group, p)
            # Weights that have missed steps (no gradient) are at another step count: batched apart.
            by_step: dict[int, list[torch.Tensor]] = {}
            for p in params:
                by_step.setdefault(self.state[p]["step"] + 1, []).append(p)
            for step, batch in by_step.items():
                self._update(group, batch, step)
        return loss

    def _init_state(self, group: dict, p: torch.Tensor) -> None:
        state = self.state[p]
        if state:
            return
        grad = p.grad
        factored, use_first_moment = self._get_options(group, grad.shape)
        state["step"] = 0
        if use_first_moment:
            state["exp_avg"] = torch.zeros_like(grad)
        if factored:
            state["exp_avg_sq_row"] = torch.zeros(grad.shape[:-1]).to(grad)
            state["exp_avg_sq_col"] = torch.zeros(grad.shape[:-2] + grad.shape[-1:]).to(grad)
        else:
            state["exp_avg_sq"] = torch.zeros_like(grad)
        state["RMS"] = 0

    def _update(self, group: dict, params: list[torch.Tensor], step: int) -> None:
        """transformers' per-weight update for `params` (all at `step` after this one), operation by operation."""
        states = [self.state[p] for p in params]
        grads = [p.grad for p in params]
        sizes = [p.numel() ** 0.5 for p in params]
        for state in states:
            state["step"] = step
        rms = torch._foreach_norm(params)
        torch._foreach_div_(rms, sizes)
        for state, value in zip(states, rms, strict=True):
            state["RMS"] = value
        lr = self._get_lr(group, states[0])  # without scale_parameter it depends on the step alone
        beta2t = 1.0 - math.pow(step, group["decay_rate"])

        squares = torch._foreach_mul(grads, grads)  # grad**2: the same products
        torch._foreach_add_(squares, group["eps"][0])
        # (Calls that mix shapes, a weight with its row means or its 0-d clipping factor, run weight by weight.)
        factored = [i for i, p in enumerate(params) if self._get_options(group, p.shape)[0]]
        plain = [i for i, p in enumerate(params) if not self._get_options(group, p.shape)[0]]
        updates: list[torch.Tensor | None] = [None] * len(params)
        if factored:
            rows = [states[i]["exp_avg_sq_row"] for i in factored]
            cols = [states[i]["exp_avg_sq_col"] for i in factored]
            torch._foreach_mul_(rows, beta2t)
            torch._foreach_add_(rows, [squares[i].mean(dim=-1) for i in factored], alpha=1.0 - beta2t)
            torch._foreach_mul_(cols, beta2t)
            torch._foreach_add_(cols, [squares[i].mean(dim=-2) for i in factored], alpha=1.0 - beta2t)
            # _approx_sq_grad: (row / row.mean(-1)).rsqrt() times col.rsqrt(), as an outer product per weight
            row_factors = torch._foreach_div(rows, [row.mean(dim=-1, keepdim=True) for row in rows])
            torch._foreach_rsqrt_(row_factors)
            col_factors = torch._foreach_rsqrt(cols)
            # In each gradient's memory layout (channels_last stays so), which the later batched calls need.
            approx = [torch.mul(row.unsqueeze(-1), col.unsqueeze(-2), out=torch.empty_like(grads[i]))
                      for i, row, col in zip(factored, row_factors, col_factors, strict=True)]
            torch._foreach_mul_(approx, [grads[i] for i in factored])
            for i, update in zip(factored, approx, strict=True):
                updates[i] = update
        if plain:
            averages = [states[i]["exp_avg_sq"] for i in plain]
            torch._foreach_mul_(averages, beta2t)
            torch._foreach_add_(averages, [squares[i] for i in plain], alpha=1.0 - beta2t)
            rooted = torch._foreach_rsqrt(averages)
            torch._foreach_mul_(rooted, [grads[i] for i in plain])
            for i, update in zip(plain, rooted, strict=True):
                updates[i] = update
        del squares  # the gradients' squares: as large as the weights

        # update /= max(RMS(update) / clip_threshold, 1), then *= lr
        clip = torch._foreach_norm(updates)
        torch._foreach_div_(clip, sizes)
        torch._foreach_div_(clip, group["clip_threshold"])
        torch._foreach_clamp_min_(clip, 1.0)
        torch._foreach_div_(updates, clip)
        torch._foreach_mul_(updates, lr)
        if group["beta1"] is not None:
            averages = [state["exp_avg"] for state in states]
            torch._foreach_mul_(averages, group["beta1"])
            torch._foreach_add_(averages, updates, alpha=1 - group["beta1"])
            updates = averages
        if group["weight_decay"] != 0:
            torch._foreach_add_(params, params, alpha=-group["weight_decay"] * lr)
        torch._foreach_sub_(params, updates)  # p.add_(-update): the same sum
