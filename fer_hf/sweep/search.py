"""Which trial comes next: W&B's grid in W&B's order, or Optuna proposals from the same space for random and bayes.

W&B's grid walks `itertools.product` over the parameters sorted by name, so the last name varies fastest. For random
and bayes we draw from the same distributions W&B documents, with Optuna's `RandomSampler` and its Bayesian
`TPESampler` (W&B's bayes uses a Gaussian process; TPE is Optuna's default model-based sampler). A proposal depends
only on the seed, the trial's index and the results before it, so a resumed sweep proposes what it would have.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import yaml

from fer_hf.sweep.spec import Parameter, SweepConfigError, SweepSpec

_EPS = 1e-6  # quantiles stay inside (0, 1): the normal family has no finite end points


@dataclass(frozen=True)
class Observation:
    """A past trial as the search sees it: its parameters and its metric (None when it failed or gave NaN)."""

    params: dict[str, Any]
    value: float | None


def grid_values(parameter: Parameter) -> list[Any]:
    """The values W&B's grid takes for a parameter, repeats dropped as W&B drops them (it hashes each value's YAML
    dump, integral floats as ints: 3000000.0 == 3000000)."""
    spec, kind = parameter.spec, parameter.distribution
    if kind == "constant":
        values = [spec["value"]]
    elif kind == "categorical":
        values = list(spec["values"])
    elif kind == "int_uniform":
        values = list(range(spec["min"], spec["max"] + 1))
    elif kind == "q_uniform":  # W&B's grid uses numpy.arange(min, max, q): max itself is left out
        low, high, q = spec["min"], spec["max"], spec["q"]
        values = [low + i * q for i in range(max(0, math.ceil((high - low) / q)))]
    else:
        raise ValueError(f"{parameter.name}: a {kind} parameter has no grid.")
    unique: dict[str, Any] = {}
    for value in values:
        key = int(value) if isinstance(value, float) and value.is_integer() else value
        unique.setdefault(yaml.safe_dump(key, default_flow_style=True, sort_keys=True), value)
    return list(unique.values())


def grid(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination W&B's grid runs, in its order; each holds all parameters (constants too), sorted by name."""
    names = sorted(spec.parameters)
    values = [grid_values(spec.parameters[name]) for name in names]
    return [dict(zip(names, combination, strict=True)) for combination in itertools.product(*values)]


def _quantize(value: float, q: float | int) -> float | int:
    # round(x / q) * q leaves float noise (0.30000000000000004); keep 12 significant digits like a person would.
    quantized = round(value / q) * q
    return int(quantized) if isinstance(q, int) else float(f"{quantized:.12g}")


class _Dimension:
    """One searched parameter as an Optuna distribution, with the map to W&B's value and back."""

    def __init__(self, parameter: Parameter, source: str):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        self.parameter = parameter
        spec, kind = parameter.spec, parameter.distribution
        self.normal = None
        if kind == "categorical":
            choices = list(dict.fromkeys(spec["values"]))  # Optuna wants distinct choices
            self.distribution = CategoricalDistribution(choices)
        elif kind == "int_uniform":
            self.distribution = IntDistribution(spec["min"], spec["max"])
        elif kind in ("uniform", "q_uniform"):
            self.distribution = FloatDistribution(spec["min"], spec["max"])
        elif kind in ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values"):
            # log(1/X) uniform on [log(1/max), log(1/min)] is log X uniform on [log min, log max]: the same law.
            self.distribution = FloatDistribution(spec["min"], spec["max"], log=True)
        elif kind in ("categorical_w_probabilities", "normal", "q_normal", "log_normal", "q_log_normal"):
            # Sampled through its quantile u in (0, 1), so both samplers see a bounded, well-scaled dimension.
            self.distribution = FloatDistribution(_EPS, 1 - _EPS)
            if "normal" in kind:
                self.normal = NormalDist(spec["mu"], spec["sigma"]) if spec["sigma"] > 0 else None
        else:
            raise SweepConfigError(source, [f"parameters.{parameter.name}: the local runner cannot sample a {kind} "
                                            f"distribution (W&B can); use values or another one"])

    def to_value(self, internal: Any) -> Any:
        spec, kind = self.parameter.spec, self.parameter.distribution
        if kind in ("categorical", "int_uniform", "uniform", "log_uniform_values", "inv_log_uniform_values"):
            return internal
        if kind in ("q_uniform", "q_log_uniform_values"):
            return _quantize(internal, spec["q"])
        if kind == "categorical_w_probabilities":
            cumulative = list(itertools.accumulate(spec["probabilities"]))
            index = next((i for i, edge in enumerate(cumulative) if internal < edge), len(cumulative) - 1)
            return spec["values"][index]
        x = self.normal.inv_cdf(internal) if self.normal else spec["mu"]
        if "log" in kind:
            x = math.exp(x)
        return _quantize(x, spec["q"]) if kind.startswith("q_") else x

    def to_internal(self, value: Any) -> Any | None:
        """The sampler's coordinate for a recorded value (None when the value lies outside this space)."""
        spec, kind = self.parameter.spec, self.parameter.distribution
        try:
            if kind == "categorical":
                return value if value in self.distribution.choices else None
            if kind == "categorical_w_probabilities":
                index = spec["values"].index(value)
                cumulative = [0.0, *itertools.accumulate(spec["probabilities"])]
                return min(max((cumulative[index] + cumulative[index + 1]) / 2, _EPS), 1 - _EPS)
            if kind in ("normal", "q_normal", "log_normal", "q_log_normal"):
                x = math.log(value) if "log" in kind else float(value)
                u = self.normal.cdf(x) if self.normal else 0.5
                return min(max(u, _EPS), 1 - _EPS)
            low, high = self.distribution.low, self.distribution.high
            clipped = min(max(value, low), high)
            return int(clipped) if kind == "int_uniform" else float(clipped)
        except (TypeError, ValueError):
            return None


class OptunaSearch:
    """Random or Bayesian proposals over a sweep's searched parameters; constants are passed through."""

    def __init__(self, spec: SweepSpec, seed: int = 0):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spec = spec
        self.seed = seed
        self.dimensions = {name: _Dimension(spec.parameters[name], spec.source) for name in spec.searched}

    def propose(self, index: int, history: Sequence[Observation]) -> dict[str, Any]:
        """Parameters for trial `index`, given what the trials before it gave."""
        import optuna

        seed = (self.seed * 1_000_003 + index) % 2**32
        sampler = optuna.samplers.RandomSampler if self.spec.method == "random" else optuna.samplers.TPESampler
        study = optuna.create_study(direction=self.spec.goal, sampler=sampler(seed=seed))
        distributions = {name: dim.distribution for name, dim in self.dimensions.items()}
        for past in history:
            internal = {name: dim.to_internal(past.params.get(name)) for name, dim in self.dimensions.items()}
            if any(value is None for value in internal.values()):
                continue  # not a point of this space (should not happen within one sweep)
            finished = past.value is not None and not math.isnan(past.value)
            study.add_trial(optuna.trial.create_trial(
                params=internal,
                distributions=distributions,
                value=past.value if finished else None,
                state=optuna.trial.TrialState.COMPLETE if finished else optuna.trial.TrialState.FAIL,
            ))
        trial = study.ask(distributions)
        params = dict(self.spec.constants)
        params.update({name: dim.to_value(trial.params[name]) for name, dim in self.dimensions.items()})
        return dict(sorted(params.items()))


class Planner:
    """The parameters of trial `index`: the grid's entry, or a fresh Optuna proposal."""

    def __init__(self, spec: SweepSpec, sweep_seed: int):
        self.grid = grid(spec) if spec.method == "grid" else None
        self.search = None if self.grid is not None else OptunaSearch(spec, sweep_seed)

    @property
    def grid_size(self) -> int | None:
        return None if self.grid is None else len(self.grid)

    def params(self, index: int, history: Sequence[Observation] = ()) -> dict[str, Any]:
        return self.grid[index] if self.grid is not None else self.search.propose(index, history)
