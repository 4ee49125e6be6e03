"""Which trial comes next: W&B's grid in W&B's order, or Optuna proposals from the same space for random and bayes.

W&B's grid walks `itertools.product` over the parameters sorted by name, so the last name varies fastest. For random
and bayes we draw from the same distributions W&B documents, with Optuna's `RandomSampler` and its Bayesian
`TPESampler` (W&B's bayes uses a Gaussian process; TPE is Optuna's default model-based sampler). A proposal depends
only on the seed, the trial's index and the results before it, so a resumed sweep proposes what it would have.
"""

from __future__ import annotations

import bisect
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
    if kind in ("constant", "categorical"):
        values = spec["values"] if "values" in spec else [spec["value"]]
    elif kind == "int_uniform":
        values = list(range(spec["min"], spec["max"] + 1))
    elif kind == "q_uniform":  # W&B's grid uses numpy.arange(min, max, q): max itself is left out
        values = [spec["min"] + i * spec["q"] for i in range(math.ceil((spec["max"] - spec["min"]) / spec["q"]))]
    else:
        raise ValueError(f"{parameter.name}: a {kind} parameter has no grid.")
    dumps = [yaml.safe_dump(int(v) if isinstance(v, float) and v.is_integer() else v) for v in values]
    return [value for i, value in enumerate(values) if dumps.index(dumps[i]) == i]  # the first of each dump


def grid(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination W&B's grid runs, in its order; each holds all parameters (constants too), sorted by name."""
    values = [grid_values(parameter) for parameter in spec.parameters.values()]  # sorted by name, as W&B's
    return [dict(zip(spec.parameters, combination, strict=True)) for combination in itertools.product(*values)]


class _Dimension:
    """One searched parameter as an Optuna distribution, with the map to W&B's value and back."""

    def __init__(self, parameter: Parameter, source: str):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        self.spec, self.kind = spec, kind = parameter.spec, parameter.distribution
        if kind == "categorical":
            self.distribution = CategoricalDistribution(list(dict.fromkeys(spec["values"])))  # distinct choices
        elif kind == "int_uniform":
            self.distribution = IntDistribution(spec["min"], spec["max"])
        elif kind in ("uniform", "q_uniform", "log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values"):
            # log(1/X) uniform on [log(1/max), log(1/min)] is log X uniform on [log min, log max]: the same law.
            self.distribution = FloatDistribution(spec["min"], spec["max"], log="log" in kind)
        elif kind == "categorical_w_probabilities" or "normal" in kind:
            # Sampled through its quantile u in (0, 1), so both samplers see a bounded, well-scaled dimension.
            self.distribution = FloatDistribution(_EPS, 1 - _EPS)
            self.normal = NormalDist(spec["mu"], spec["sigma"]) if spec.get("sigma") else None  # sigma 0: always mu
        else:
            raise SweepConfigError(source, [f"parameters.{parameter.name}: the local runner cannot sample a {kind} "
                                            f"distribution (W&B can); use values or another one"])

    def to_value(self, internal: Any) -> Any:
        spec, kind = self.spec, self.kind
        if kind == "categorical_w_probabilities":
            index = bisect.bisect_right(list(itertools.accumulate(spec["probabilities"])), internal)
            return spec["values"][min(index, len(spec["values"]) - 1)]
        if "normal" in kind:
            internal = self.normal.inv_cdf(internal) if self.normal else spec["mu"]
            internal = math.exp(internal) if "log" in kind else internal
        if not kind.startswith("q_"):
            return internal
        # round(x / q) * q leaves float noise (0.30000000000000004); keep 12 significant digits like a person would.
        quantized = round(internal / spec["q"]) * spec["q"]
        return int(quantized) if isinstance(spec["q"], int) else float(f"{quantized:.12g}")

    def to_internal(self, value: Any) -> Any | None:
        """The sampler's coordinate for a recorded value (None when the value lies outside this space)."""
        spec, kind = self.spec, self.kind
        try:
            if kind == "categorical":
                return value if value in self.distribution.choices else None
            if kind == "categorical_w_probabilities":
                index = spec["values"].index(value)
                cumulative = [0.0, *itertools.accumulate(spec["probabilities"])]
                u = (cumulative[index] + cumulative[index + 1]) / 2
            elif "normal" in kind:
                u = self.normal.cdf(math.log(value) if "log" in kind else float(value)) if self.normal else 0.5
            else:
                clipped = min(max(value, self.distribution.low), self.distribution.high)
                return int(clipped) if kind == "int_uniform" else float(clipped)
            return min(max(u, _EPS), 1 - _EPS)
        except (TypeError, ValueError):
            return None


class OptunaSearch:
    """Random or Bayesian proposals over a sweep's searched parameters; constants are passed through."""

    def __init__(self, spec: SweepSpec, seed: int = 0):
        self.spec, self.seed = spec, seed
        self.dimensions = {name: _Dimension(spec.parameters[name], spec.source) for name in spec.searched}

    def propose(self, index: int, history: Sequence[Observation]) -> dict[str, Any]:
        """Parameters for trial `index`, given what the trials before it gave."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        seed = (self.seed * 1_000_003 + index) % 2**32
        sampler = optuna.samplers.RandomSampler if self.spec.method == "random" else optuna.samplers.TPESampler
        study = optuna.create_study(direction=self.spec.goal, sampler=sampler(seed=seed))
        distributions = {name: dim.distribution for name, dim in self.dimensions.items()}
        for past in history:
            internal = {name: dim.to_internal(past.params.get(name)) for name, dim in self.dimensions.items()}
            if any(value is None for value in internal.values()):
                continue  # not a point of this space (should not happen within one sweep)
            finished = past.value is not None and not math.isnan(past.value)
            state = optuna.trial.TrialState.COMPLETE if finished else optuna.trial.TrialState.FAIL
            study.add_trial(optuna.trial.create_trial(params=internal, distributions=distributions,
                                                      value=past.value if finished else None, state=state))
        trial = study.ask(distributions)
        proposed = {name: dim.to_value(trial.params[name]) for name, dim in self.dimensions.items()}
        return dict(sorted({**self.spec.constants, **proposed}.items()))


class Planner:
    """The parameters of trial `index`: the grid's entry, or a fresh Optuna proposal."""

    def __init__(self, spec: SweepSpec, sweep_seed: int):
        self.grid = grid(spec) if spec.method == "grid" else None
        self.search = None if self.grid is not None else OptunaSearch(spec, sweep_seed)

    def params(self, index: int, history: Sequence[Observation] = ()) -> dict[str, Any]:
        return self.grid[index] if self.grid is not None else self.search.propose(index, history)
