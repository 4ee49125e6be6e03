"""fer_hf.adafactor.ForeachAdafactor, its batched path forced on the CPU, gives transformers' Adafactor's weights and
state to the bit with far fewer operations a step; on a CPU it keeps transformers' step by default; it is what
`--optim adafactor` builds."""

from __future__ import annotations

import copy
import importlib
import json

import pytest
import torch
from transformers.optimization import Adafactor

from conftest import REPO
from fer_hf.adafactor import ForeachAdafactor

AS_THE_TRAINER = dict(lr=1e-3, scale_parameter=False, relative_step=False, warmup_init=False)  # --optim adafactor


def _net() -> torch.nn.Module:
    # 4-D (factored over the kernel), 2-D (factored) and 1-D (not factored) weights
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 6 * 6, 7))


def _train_both(kwargs: dict, *, steps: int = 6, groups: bool = False, drop_grad_of: int | None = None,
                dtype=torch.float32):
    torch.manual_seed(0)
    reference = _net().to(dtype)
    batched = copy.deepcopy(reference)

    def parameters(model):
        if not groups:
            return model.parameters()
        weights = list(model.parameters())
        return [{"params": weights[:2], "lr": 1e-2}, {"params": weights[2:], "weight_decay": 0.0}]

    optimizers = (Adafactor(parameters(reference), **kwargs),
                  ForeachAdafactor(parameters(batched), **kwargs, foreach=True))
    for step in range(steps):
        inputs = torch.randn(4, 3, 8, 8, dtype=dtype)
        for model, optimizer in zip((reference, batched), optimizers, strict=True):
            optimizer.zero_grad(set_to_none=True)
            model(inputs).float().square().mean().backward()
            if drop_grad_of is not None and step % 2 == 0:  # a weight left out of some steps
                list(model.parameters())[drop_grad_of].grad = None
            optimizer.step()
    return (reference, batched), optimizers


def _assert_same(models, optimizers):
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(p, q)
    states = [optimizer.state_dict()["state"] for optimizer in optimizers]
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert states[0][key].keys() == states[1][key].keys()
        for name, value in states[0][key].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(states[1][key][name])), (key, name)


@pytest.mark.parametrize("options", [
    {},
    {"beta1": 0.9},
    {"weight_decay": 0.01},
    {"clip_threshold": 0.5},
    {"lr": None, "relative_step": True, "warmup_init": True},
    {"lr": None, "relative_step": True, "scale_parameter": True},  # transformers' defaults: its own step runs
])
def test_weights_and_state_equal_transformers_adafactor_to_the_bit(options):
    kwargs = {**AS_THE_TRAINER, **options}
    _assert_same(*_train_both(kwargs))
    _assert_same(*_train_both(kwargs, groups=True))
    _assert_same(*_train_both(kwargs, drop_grad_of=1))  # its step count falls behind: batched apart


def test_bfloat16_weights_take_transformers_own_step(monkeypatch):
    calls = []
    step = Adafactor.step
    monkeypatch.setattr(Adafactor, "step", lambda self, closure=None: calls.append(1) or step(self, closure))
    _assert_same(*_train_both(AS_THE_TRAINER, steps=2, dtype=torch.bfloat16))
    assert len(calls) == 4  # both optimizers, both steps


@pytest.mark.parametrize("foreach, batched", [(None, False), (False, False), (True, True)])
def test_on_a_cpu_transformers_step_runs_unless_batching_is_forced(monkeypatch, foreach, batched):
    calls = []
    step = Adafactor.step
    monkeypatch.setattr(Adafactor, "step", lambda self, closure=None: calls.append(1) or step(self, closure))
    model = _net()
    optimizer = ForeachAdafactor(model.parameters(), **AS_THE_TRAINER, foreach=foreach)
    model(torch.randn(2, 3, 8, 8)).square().mean().backward()
    optimizer.step()
    assert calls == ([] if batched else [1])


def test_a_closure_runs_once_and_its_loss_comes_back():
    model = _net()
    optimizer = ForeachAdafactor(model.parameters(), **AS_THE_TRAINER, foreach=True)
    calls = []

    def closure():
        calls.append(1)
        with torch.enable_grad():
            loss = model(torch.randn(2, 3, 8, 8)).square().mean()
            loss.backward()
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    assert optimizer.step(closure) is not None and calls == [1]
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_a_checkpoint_of_either_resumes_in_the_other():
    (reference, batched), (original, foreach) = _train_both(AS_THE_TRAINER, steps=3)
    # transformers' checkpoint continued by ours, and ours by transformers'
    by_ours = ForeachAdafactor(batched.parameters(), **AS_THE_TRAINER, foreach=True)
    by_ours.load_state_dict(copy.deepcopy(original.state_dict()))
    by_theirs = Adafactor(reference.parameters(), **AS_THE_TRAINER)
    by_theirs.load_state_dict(copy.deepcopy(foreach.state_dict()))
    inputs = torch.randn(4, 3, 8, 8)
    for model, optimizer in ((reference, by_theirs), (batched, by_ours)):
        optimizer.zero_grad()
        model(inputs).square().mean().backward()
        optimizer.step()
    _assert_same((reference, batched), (by_theirs, by_ours))


def test_channels_last_weights_give_the_same_bits():
    def channels_last(kwargs, steps=4):
        torch.manual_seed(0)
        model = _net().to(memory_format=torch.channels_last)
        optimizer = kwargs.pop("cls")(model.parameters(), **kwargs)
        for _ in range(steps):
            optimizer.zero_grad()
            model(torch.randn(4, 3, 8, 8).to(memory_format=torch.channels_last)).square().mean().backward()
            optimizer.step()
        return model

    models = (channels_last({"cls": Adafactor, **AS_THE_TRAINER, "beta1": 0.9}),
              channels_last({"cls": ForeachAdafactor, **AS_THE_TRAINER, "beta1": 0.9, "foreach": True}))
    for p, q in zip(*(model.parameters() for model in models), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("foreach", [None, True])
def test_optimizer_hooks_run_once_a_step(foreach):
    Adafactor(_net().parameters(), **AS_THE_TRAINER)  # a plain one first: torch wraps its class's step too
    model = _net()
    optimizer = ForeachAdafactor(model.parameters(), **AS_THE_TRAINER, foreach=foreach)
    calls = []
    optimizer.register_step_pre_hook(lambda *args: calls.append("pre"))
    optimizer.register_step_post_hook(lambda *args: calls.append("post"))
    model(torch.randn(2, 3, 8, 8)).square().mean().backward()
    optimizer.step()
    assert calls == ["pre", "post"]


def test_a_step_dispatches_a_tenth_of_the_operations(monkeypatch):
    """benchmarks/optimizer_overhead.py's count on ResNet-50's 161 weights (shrunk to 2 elements an axis)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    overhead = importlib.import_module("optimizer_overhead")
    weights = overhead.shrunken_parameters("resnet50")
    original = overhead.ops_per_step(Adafactor(weights, **AS_THE_TRAINER))
    batched = overhead.ops_per_step(ForeachAdafactor([torch.nn.Parameter(w.detach().clone()) for w in weights],
                                                     **AS_THE_TRAINER, foreach=True))
    assert original > 10 * len(weights) and batched * 10 < original, (original, batched)


def test_benchmark_finds_both_adafactors_at_the_same_weights_on_resnet18(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    overhead = importlib.import_module("optimizer_overhead")
    result = overhead.main(["--models", "resnet18", "--steps", "3", "--json", str(tmp_path / "out.json")])
    row = result["resnet18"]
    assert row["weights"] == 62 and row["adafactor_foreach_max_abs_difference"] == 0.0
    assert row["adafactor_foreach_ops"] < row["adafactor_ops"] and row["adafactor_ms"] > 0
    assert json.loads((tmp_path / "out.json").read_text())["models"] == result


def test_optim_adafactor_builds_the_batched_optimizer(tmp_path):
    from transformers import TrainingArguments

    from fer_hf.trainer import FerTrainer

    model = torch.nn.Linear(4, 7)
    args = TrainingArguments(output_dir=str(tmp_path), optim="adafactor", learning_rate=1e-3, report_to=[],
                             use_cpu=True)
    optimizer_cls, kwargs = FerTrainer.get_optimizer_cls_and_kwargs(args, model)
    assert optimizer_cls is ForeachAdafactor and not kwargs["scale_parameter"] and not kwargs["relative_step"]
    args = TrainingArguments(output_dir=str(tmp_path), optim="adamw_torch", report_to=[], use_cpu=True)
    assert FerTrainer.get_optimizer_cls_and_kwargs(args, model)[0] is torch.optim.AdamW
