"""W&B sweep files: the documented syntax, checked without W&B's sweeps engine, and what `fer_hf.train` makes of it.

W&B's own engine (`wandb[sweeps]`, package `sweeps`) pins numpy<2, so it cannot be a dependency. The rules below follow
W&B's sweep configuration reference and the engine's JSON schema (https://docs.wandb.ai/guides/sweeps/sweep-config-keys):
top-level keys, `method`, `metric`, the parameter forms (`value`, `values`, `min`/`max`, a `distribution`, nested
`parameters`), `early_terminate` and the command macros. On top of that, `load_sweep` checks that every parameter is a
real argument of the train entry point and that each value converts with that argument's type, so a sweep fails here,
naming the key, and never as the hundredth W&B run.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fer_hf.labels import LABEL_NAMES
from fer_hf.metrics import SUMMARY_KEYS

METHODS = ("grid", "random", "bayes")
GOALS = ("minimize", "maximize")
TOP_LEVEL_KEYS = (
    "program", "entity", "project", "description", "name", "method", "metric", "parameters", "early_terminate",
    "command", "run_cap", "controller", "apiVersion", "kind", "job", "image_uri", "scheduler", "metrics",
)
# Command macros: the documented ones, then those W&B's agent also fills in (wandb_agent.py, sweeps/utils.py).
# `${envvar:NAME}` (NAME in capitals, as the agent's regex reads it) may also sit inside an item.
MACROS = (
    "env", "interpreter", "program", "args", "args_no_boolean_flags", "args_no_hyphens", "args_json", "args_json_file",
    "args_no_equals", "args_append_hydra", "args_override_hydra",
)
DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")
ENVVAR_MACRO = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")
PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")

# distribution -> (required keys, optional keys), `distribution` itself aside; from W&B's schema.
DISTRIBUTIONS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    name: (frozenset(required), frozenset(optional))
    for name, required, optional in (
        ("constant", {"value"}, ()),
        ("categorical", {"values"}, ()),
        ("categorical_w_probabilities", {"values", "probabilities"}, ()),
        ("int_uniform", {"min", "max"}, ()),
        ("uniform", {"min", "max"}, ()),
        ("q_uniform", {"min", "max"}, {"q"}),
        ("log_uniform_values", {"min", "max"}, ()),
        ("q_log_uniform_values", {"min", "max"}, {"q"}),
        ("inv_log_uniform_values", {"min", "max"}, ()),
        ("normal", (), {"mu", "sigma"}),
        ("q_normal", (), {"mu", "sigma", "q"}),
        ("log_normal", (), {"mu", "sigma"}),
        ("q_log_normal", (), {"mu", "sigma", "q"}),
        ("beta", (), {"a", "b"}),
        ("q_beta", (), {"a", "b", "q"}),
    )
}
# The engine rejects these (min/max were base-e exponents); the docs still list them.
DEPRECATED_DISTRIBUTIONS = {
    "log_uniform": "log_uniform_values", "inv_log_uniform": "inv_log_uniform_values",
    "q_log_uniform": "q_log_uniform_values",
}
DEFAULTS = {"q": 1.0, "mu": 0.0, "sigma": 1.0, "a": 1.0, "b": 1.0}
GRID_DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "q_uniform")
INT_DISTRIBUTIONS = ("int_uniform",)
QUANTIZED = ("q_uniform", "q_log_uniform_values", "q_normal", "q_log_normal", "q_beta")

# transformers' WandbCallback sends Trainer's logs to W&B with `eval_` -> `eval/`, `test_` -> `test/` and every
# other key under `train/`, except these, which go to the run summary under their own name.
SUMMARY_SCALARS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos")
_SPEED_KEYS = ("loss", "runtime", "samples_per_second", "steps_per_second")
_PER_CLASS = tuple(f"{metric}_{label}" for label in LABEL_NAMES for metric in ("precision", "recall", "f1"))
EVAL_KEYS = (*_SPEED_KEYS, *SUMMARY_KEYS, *_PER_CLASS)
TRAIN_KEYS = ("loss", "grad_norm", "learning_rate", "epoch", "train_accuracy", "global_step")


_YAML_FLOAT_HINT = " (PyYAML, which wandb uses too, reads 1e-4 as a string: write 0.0001, 1.0e-4 or !!float 1e-4)"


class SweepConfigError(ValueError):
    """A sweep file that W&B or `fer_hf.train` would reject; the message names the file and every offending key."""

    def __init__(self, source: str, problems: Iterable[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__(f"{source}:\n" + "\n".join(f"  - {problem}" for problem in self.problems))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _suggest(name: str, candidates: Iterable[str]) -> str:
    candidates = list(candidates)
    prefixed = [c for c in candidates if c.startswith(name) and c != name]  # `adamw` -> adamw_torch first
    close = list(dict.fromkeys(prefixed[:3] + difflib.get_close_matches(name, candidates, n=3)))[:3]
    return f" (did you mean {', '.join(close)}?)" if close else ""


# ---------------------------------------------------------------------------------------------------------------
# W&B syntax
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    """One swept parameter: its W&B distribution and the spec with W&B's defaults filled in."""

    name: str
    distribution: str
    spec: dict[str, Any]

    @property
    def searched(self) -> bool:
        return self.distribution != "constant"

    def grid_values(self) -> list[Any]:
        """The values W&B's grid takes for this parameter, duplicates dropped as W&B's grid does."""
        if self.distribution == "constant":
            values = [self.spec["value"]]
        elif self.distribution == "categorical":
            values = list(self.spec["values"])
        elif self.distribution == "int_uniform":
            values = list(range(self.spec["min"], self.spec["max"] + 1))
        elif self.distribution == "q_uniform":
            # W&B's grid uses numpy.arange(min, max, q): max itself is left out.
            low, high, q = self.spec["min"], self.spec["max"], self.spec["q"]
            count = max(0, math.ceil((high - low) / q))
            values = [low + i * q for i in range(count)]
        else:
            raise ValueError(f"{self.name}: a {self.distribution} parameter has no grid.")
        unique: dict[str, Any] = {}
        for value in values:
            unique.setdefault(_grid_key(value), value)
        return list(unique.values())


def _grid_key(value: Any) -> str:
    # W&B hashes each value's YAML dump, with integral floats as ints (3000000.0 == 3000000).
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=True)


def _resolve_parameter(name: str, spec: Any, problems: list[str]) -> Parameter | None:
    """W&B's reading of one parameter spec; appends a message per problem (prefixed `parameters.<name>`)."""
    where = f"parameters.{name}"
    if not isinstance(spec, dict):
        problems.append(f"{where}: expected a mapping such as `values: [...]`, `value: x` or `min:`/`max:`, "
                        f"got {spec!r}")
        return None
    if "parameters" in spec:
        extra = sorted(set(spec) - {"parameters"})
        if extra:
            problems.append(f"{where}: nested `parameters` cannot sit beside {extra}")
        nested = spec["parameters"]
        if not isinstance(nested, dict) or not nested:
            problems.append(f"{where}.parameters: expected a non-empty mapping of parameters")
        else:
            for key, value in nested.items():
                _resolve_parameter(f"{name}.parameters.{key}", value, problems)
        return Parameter(name, "nested", dict(spec))

    distribution = spec.get("distribution")
    if distribution is None:
        if "value" in spec:
            distribution = "constant"
        elif "values" in spec:
            distribution = "categorical_w_probabilities" if "probabilities" in spec else "categorical"
        elif "min" in spec and "max" in spec:
            both_int = _is_int(spec["min"]) and _is_int(spec["max"])
            distribution = "int_uniform" if both_int else "uniform"
        else:
            problems.append(f"{where}: give `value`, `values`, `min` and `max`, a `distribution`, or nested "
                            f"`parameters` (got keys {sorted(spec)})")
            return None
    elif distribution in DEPRECATED_DISTRIBUTIONS:
        problems.append(f"{where}: uses {distribution}, where min/max specify base-e exponents; W&B rejects it. Use "
                        f"{DEPRECATED_DISTRIBUTIONS[distribution]} to specify limit values.")
        return None
    elif distribution not in DISTRIBUTIONS:
        problems.append(f"{where}.distribution: unknown distribution {distribution!r}"
                        f"{_suggest(str(distribution), DISTRIBUTIONS)}; W&B knows {', '.join(DISTRIBUTIONS)}")
        return None

    required, optional = DISTRIBUTIONS[distribution]
    if distribution == "categorical" and "probabilities" in spec:
        problems.append(f"{where}: `probabilities` go without `distribution: categorical` (W&B's schema rejects both)")
        return None
    unknown = sorted(set(spec) - required - optional - {"distribution"})
    if unknown:
        problems.append(f"{where}: {distribution} takes {sorted(required | optional)}, not {unknown}")
    missing = sorted(required - set(spec))
    if missing:
        problems.append(f"{where}: {distribution} needs {missing}")
    if unknown or missing:
        return None

    filled = {key: spec.get(key, DEFAULTS.get(key)) for key in sorted(required | optional)}
    before = len(problems)
    if "values" in filled and (not isinstance(filled["values"], list) or not filled["values"]):
        problems.append(f"{where}.values: expected a non-empty list, got {filled['values']!r}")
    if "probabilities" in filled:
        probabilities = filled["probabilities"]
        if not isinstance(probabilities, list) or not all(_is_number(p) and p >= 0 for p in probabilities):
            problems.append(f"{where}.probabilities: expected a list of non-negative numbers")
        elif isinstance(filled["values"], list) and len(probabilities) != len(filled["values"]):
            problems.append(f"{where}: values and probabilities are not the same length")
        elif not math.isclose(sum(probabilities), 1.0, rel_tol=1e-6, abs_tol=1e-8):
            problems.append(f"{where}.probabilities: {probabilities} do not sum to 1")
    for key in ("min", "max", "mu", "sigma", "q", "a", "b"):
        if key in filled and not _is_number(filled[key]):
            problems.append(f"{where}.{key}: expected a number, got {filled[key]!r}"
                            + (_YAML_FLOAT_HINT
                               if isinstance(filled[key], str) else ""))
    if len(problems) > before:
        return None
    if distribution in INT_DISTRIBUTIONS and not (_is_int(filled["min"]) and _is_int(filled["max"])):
        problems.append(f"{where}: int_uniform needs integer min and max, got {filled['min']!r} and {filled['max']!r}")
    if "min" in filled and filled["min"] >= filled["max"]:
        problems.append(f"{where}: min {filled['min']} is not less than max {filled['max']}")
    if distribution.endswith("_values") and filled["min"] <= 0:
        problems.append(f"{where}.min: {distribution} needs min > 0, got {filled['min']}")
    if "q" in filled and filled["q"] <= 0:
        problems.append(f"{where}.q: must be > 0, got {filled['q']}")
    for key in ("sigma", "a", "b"):
        if key in filled and filled[key] < 0:
            problems.append(f"{where}.{key}: must be >= 0, got {filled[key]}")
    if len(problems) > before:
        return None
    return Parameter(name, distribution, filled)


def _check_metric(metric: Any, problems: list[str]) -> None:
    if not isinstance(metric, dict):
        problems.append(f"metric: expected a mapping with `name` and `goal`, got {metric!r}")
        return
    allowed = {"name", "goal", "target", "impute", "impute_while_running"}
    unknown = sorted(set(metric) - allowed)
    if unknown:
        problems.append(f"metric: unknown key(s) {unknown}; W&B takes {sorted(allowed)}")
    if not isinstance(metric.get("name"), str) or not metric.get("name"):
        problems.append("metric.name: required, the name of a logged metric")
    if "goal" in metric and metric["goal"] not in GOALS:
        problems.append(f"metric.goal: must be minimize or maximize, got {metric['goal']!r}")
    if "target" in metric and not _is_number(metric["target"]):
        problems.append(f"metric.target: expected a number, got {metric['target']!r}")
    if "impute" in metric and metric["impute"] not in ("latest", "best", "worst"):
        problems.append(f"metric.impute: must be latest, best or worst, got {metric['impute']!r}")
    if "impute_while_running" in metric and metric["impute_while_running"] not in ("latest", "best", "worst", "false"):
        problems.append(f"metric.impute_while_running: must be latest, best, worst or false, "
                        f"got {metric['impute_while_running']!r}")


def _check_early_terminate(early: Any, problems: list[str]) -> None:
    if not isinstance(early, dict):
        problems.append(f"early_terminate: expected a mapping with `type: hyperband`, got {early!r}")
        return
    allowed = {"type", "min_iter", "max_iter", "s", "eta", "strict"}
    unknown = sorted(set(early) - allowed)
    if unknown:
        problems.append(f"early_terminate: unknown key(s) {unknown}; hyperband takes {sorted(allowed)}")
    if early.get("type") != "hyperband":
        problems.append(f"early_terminate.type: required; W&B supports only `hyperband`, got {early.get('type')!r}")
    if "min_iter" not in early and not ("max_iter" in early and "s" in early):
        problems.append("early_terminate: give `min_iter`, or `max_iter` with `s`")
    if "min_iter" in early and not (_is_int(early["min_iter"]) and early["min_iter"] >= 1):
        problems.append(f"early_terminate.min_iter: expected an integer >= 1, got {early['min_iter']!r}")
    if "max_iter" in early and not _is_int(early["max_iter"]):
        problems.append(f"early_terminate.max_iter: expected an integer, got {early['max_iter']!r}")
    if "s" in early and not _is_number(early["s"]):
        problems.append(f"early_terminate.s: expected a number, got {early['s']!r}")
    if "eta" in early and not (_is_number(early["eta"]) and early["eta"] > 1):
        problems.append(f"early_terminate.eta: expected a number > 1, got {early['eta']!r}")
    if "strict" in early and not isinstance(early["strict"], bool):
        problems.append(f"early_terminate.strict: expected true or false, got {early['strict']!r}")


def _check_command(command: Any, has_program: bool, problems: list[str]) -> None:
    if not isinstance(command, list) or not command:
        problems.append(f"command: expected a non-empty list of items, got {command!r}")
        return
    for i, item in enumerate(command):
        if not isinstance(item, (str, int, float)) or isinstance(item, bool):
            problems.append(f"command[{i}]: expected a string, got {item!r}")
            continue
        text = ENVVAR_MACRO.sub("", str(item))
        if "${" not in text:
            continue
        macro = text[2:-1] if text.startswith("${") and text.endswith("}") and text.count("${") == 1 else None
        if macro is None or str(item) != text:
            problems.append(f"command[{i}]: {item!r}: a macro must be a whole item; W&B's agent replaces only items "
                            f"that are exactly a macro and passes this one verbatim (parameters reach the program "
                            f"through ${{args}})")
        elif macro not in MACROS:
            problems.append(f"command[{i}]: unknown macro {item!r}{_suggest(macro, MACROS)}; W&B would drop it "
                            f"silently. Macros: {', '.join('${' + m + '}' for m in MACROS)}, ${{envvar:NAME}}")
        elif macro == "program" and not has_program:
            problems.append(f"command[{i}]: ${{program}} needs a top-level `program`")


def wandb_violations(config: Any) -> list[str]:
    """Everything W&B's sweep validation would reject in `config` (empty when valid), one message per key."""
    if not isinstance(config, dict):
        return [f"a sweep configuration is a mapping of top-level keys, got {type(config).__name__}"]
    problems: list[str] = []
    for key in config:
        if key not in TOP_LEVEL_KEYS:
            problems.append(f"{key}: unknown top-level key{_suggest(str(key), TOP_LEVEL_KEYS)}; W&B takes "
                            f"{', '.join(TOP_LEVEL_KEYS[:11])}")
    for key in ("program", "entity", "project", "description", "name", "job", "image_uri", "apiVersion"):
        if key in config and not isinstance(config[key], str):
            problems.append(f"{key}: expected a string, got {config[key]!r}")

    method = config.get("method")
    if method is None:
        problems.append("method: required, one of grid, random, bayes")
    elif method not in (*METHODS, "custom"):
        problems.append(f"method: {method!r} is not a W&B search method{_suggest(str(method), METHODS)}; "
                        f"use grid, random or bayes")
    elif method == "custom" and not isinstance(config.get("scheduler"), dict):
        problems.append("method: custom needs a `scheduler` (engine optuna or ax)")
    if "scheduler" in config:
        scheduler = config["scheduler"]
        engine = scheduler.get("engine") if isinstance(scheduler, dict) else None
        if engine not in ("wandb", "optuna", "ax"):
            problems.append(f"scheduler.engine: must be wandb, optuna or ax, got {engine!r}")
        if "early_terminate" in config:
            problems.append("early_terminate: cannot be used together with `scheduler`")
    if "metric" in config and "metrics" in config:
        problems.append("metrics: cannot be set together with `metric`")

    if "metric" in config:
        _check_metric(config["metric"], problems)
    elif method == "bayes":
        problems.append("metric: bayes search needs a `metric` (name and goal) to model")

    if "run_cap" in config and not (_is_int(config["run_cap"]) and config["run_cap"] > 0):
        problems.append(f"run_cap: expected a positive integer, got {config['run_cap']!r}")
    if "early_terminate" in config:
        _check_early_terminate(config["early_terminate"], problems)
    if "controller" in config:
        controller = config["controller"]
        if not isinstance(controller, dict) or controller.get("type") not in ("local", "cloud"):
            problems.append(f"controller: expected `type: local` or `type: cloud`, got {controller!r}")
    has_program = isinstance(config.get("program"), str)
    if "command" in config:
        _check_command(config["command"], has_program, problems)
    elif not has_program and "job" not in config and "image_uri" not in config:
        problems.append("program: required; W&B's default command runs `${env} ${interpreter} ${program} ${args}`")

    parameters = config.get("parameters")
    if parameters is None:
        if not (isinstance(config.get("scheduler"), dict) and config["scheduler"].get("search_space")):
            problems.append("parameters: required, the hyperparameters to search")
    elif not isinstance(parameters, dict) or not parameters:
        problems.append(f"parameters: expected a non-empty mapping of parameter names to specs, got {parameters!r}")
    else:
        for name, spec in parameters.items():
            if not isinstance(name, str) or not PARAMETER_NAME.match(name):
                problems.append(f"parameters.{name}: not a valid parameter name (letters, digits, _ . -)")
                continue
            parameter = _resolve_parameter(name, spec, problems)
            if parameter is None or method != "grid":
                continue
            if parameter.distribution == "nested":
                continue
            if parameter.distribution not in GRID_DISTRIBUTIONS:
                problems.append(f"parameters.{name}: a {parameter.distribution} parameter cannot be searched by "
                                f"grid; grid takes values, value, int_uniform or q_uniform")
    return problems


def check_wandb_config(config: Any, source: str = "sweep configuration") -> None:
    """Raise `SweepConfigError` listing every rule of W&B's sweep syntax that `config` breaks."""
    problems = wandb_violations(config)
    if problems:
        raise SweepConfigError(source, problems)


# ---------------------------------------------------------------------------------------------------------------
# What fer_hf.train makes of it
# ---------------------------------------------------------------------------------------------------------------


def local_metric(name: str) -> tuple[str, str]:
    """Where the W&B key `name` lives in a finished run folder: ("results", key of all_results.json) or
    ("history", key of trainer_state.json's log_history, last value). Raises ValueError for keys W&B never gets."""
    prefix, _, rest = name.partition("/")
    if prefix in ("eval", "test") and rest in EVAL_KEYS:
        return "results", f"{prefix}_{rest}"
    if prefix == "train" and rest in TRAIN_KEYS:
        return "history", rest
    if name in SUMMARY_SCALARS:
        return "results", name
    known = [f"eval/{key}" for key in EVAL_KEYS] + [f"train/{key}" for key in TRAIN_KEYS] + list(SUMMARY_SCALARS)
    if name.split("_", 1)[0] in ("eval", "test") and "_" in name:
        hint = f" (W&B receives Trainer's {name} as {name.replace('_', '/', 1)})"
    else:
        hint = _suggest(name, known)
    raise ValueError(f"{name!r} is not a key the Trainer logs to W&B{hint}; transformers' WandbCallback logs "
                     f"eval_* as eval/*, test_* as test/* and other training logs as train/*")


def metric_value(run_dir: str | os.PathLike, name: str) -> float | None:
    """The value W&B's run summary would hold for `name`, read from a finished run's output_dir (None if absent)."""
    source, key = local_metric(name)
    run_dir = Path(run_dir)
    if source == "results":
        path = run_dir / "all_results.json"
        if not path.is_file():
            return None
        value = json.loads(path.read_text()).get(key)
    else:
        path = run_dir / "trainer_state.json"
        if not path.is_file():
            return None
        history = json.loads(path.read_text()).get("log_history", [])
        value = next((entry[key] for entry in reversed(history) if key in entry), None)
    return float(value) if _is_number(value) else None


def _train_action(parser: argparse.ArgumentParser, name: str) -> argparse.Action | None:
    return parser._option_string_actions.get(f"--{name}")


def _argument_kind(action: argparse.Action) -> str:
    if action.choices is not None:
        return "choice"
    kind = getattr(action.type, "__name__", "")
    return {"float": "float", "int": "int", "string_to_bool": "bool"}.get(kind, "str")


def _check_value(name: str, value: Any, action: argparse.Action, where: str) -> str | None:
    """Why W&B's `--name=value` would not reach the train parser as `value` (None when it would)."""
    if value is None:
        return f"{where}: null cannot be passed on a command line; leave {name} out to keep the recipe's value"
    if isinstance(value, (list, dict)):
        return f"{where}: W&B passes {value!r} as `--{name}={value}`, which argparse cannot read; use a scalar"
    kind = _argument_kind(action)
    choices = [str(choice) for choice in action.choices or []]
    listed = f"one of {choices}" if len(choices) <= 12 else f"one of its {len(choices)} choices (see --help)"
    expected = {"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string",
                "choice": listed}[kind]
    wrong = (
        (kind == "float" and not _is_number(value))
        or (kind == "int" and not _is_int(value))
        or (kind == "bool" and not isinstance(value, bool))
        or (kind in ("str", "choice") and not isinstance(value, str))
    )
    if not wrong:
        try:
            converted = action.type(f"{value}") if action.type else f"{value}"
            if action.choices is not None and converted not in action.choices:
                wrong = True
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            wrong = True
    if not wrong:
        return None
    hint = ""
    if isinstance(value, str) and kind in ("float", "int"):
        hint = _YAML_FLOAT_HINT
    elif kind == "choice" and isinstance(value, str):
        hint = _suggest(value, choices)
    return f"{where}: --{name} takes {expected}, got {value!r}{hint}"


def _check_parameter_for_train(parameter: Parameter, action: argparse.Action) -> list[str]:
    where = f"parameters.{parameter.name}"
    kind = _argument_kind(action)
    spec = parameter.spec
    if parameter.distribution == "constant":
        problem = _check_value(parameter.name, spec["value"], action, f"{where}.value")
        return [problem] if problem else []
    if parameter.distribution in ("categorical", "categorical_w_probabilities"):
        problems = [_check_value(parameter.name, value, action, f"{where}.values[{i}]")
                    for i, value in enumerate(spec["values"])]
        return [problem for problem in problems if problem]
    # A distribution: numbers only; an int argument needs integers out of it.
    if kind not in ("float", "int"):
        takes = {"bool": "true or false", "str": "a string", "choice": f"one of {list(action.choices or [])}"}[kind]
        return [f"{where}: a {parameter.distribution} distribution gives numbers, but --{parameter.name} takes "
                f"{takes}; use `values`"]
    gives_int = parameter.distribution == "int_uniform" or (
        parameter.distribution in QUANTIZED and _is_int(spec.get("q"))
    )
    if kind == "int" and not gives_int:
        return [f"{where}: a {parameter.distribution} distribution gives floats, but --{parameter.name} takes an "
                f"integer; use int_uniform, or a q_ distribution with an integer q"]
    return []


def _train_entry_index(command: list[str], program: str | None) -> int | None:
    """Index of the item after which the train entry point's own arguments start."""
    for i, item in enumerate(command):
        if item == "fer_hf.train" and i > 0 and command[i - 1] == "-m":
            return i
        if item == "${program}" and program and program.replace("\\", "/").rstrip("/").endswith(
            ("fer_hf/train.py", "fer_hf.train")
        ):
            return i
        if item.replace("\\", "/").endswith("fer_hf/train.py"):
            return i
    return None


def _check_command_for_train(command: list[str], program: str | None) -> list[str]:
    problems = []
    if "${args}" not in command:
        problems.append("command: must pass the parameters with ${args} (fer_hf.train reads --name=value flags)")
    elif command.count("${args}") > 1:
        problems.append("command: ${args} appears more than once")
    for other in (f"${{{macro}}}" for macro in MACROS if macro.startswith("args") and macro != "args"):
        if other in command:
            problems.append(f"command: {other} is not a form fer_hf.train reads; use ${{args}} (--name=value)")
    index = _train_entry_index(command, program)
    if index is None:
        problems.append("command: must run the train entry point, e.g. `accelerate launch -m fer_hf.train --config "
                        "RECIPE ${args}` (or `program: fer_hf/train.py` with ${program})")
    elif "${args}" in command and command.index("${args}") < index:
        problems.append("command: ${args} must come after fer_hf.train, where the train parser reads it")
    return problems


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep file: W&B-valid, and every parameter a real argument of `fer_hf.train` with a valid value."""

    source: str
    config: dict[str, Any]
    method: str
    metric: str
    goal: str
    target: float | None
    run_cap: int | None
    parameters: dict[str, Parameter]  # sorted by name, the order W&B's grid enumerates them in
    command: list[str]

    @property
    def name(self) -> str:
        return str(self.config.get("name") or Path(self.source).stem)

    @property
    def program(self) -> str | None:
        return self.config.get("program")

    @property
    def searched(self) -> list[str]:
        return [name for name, parameter in self.parameters.items() if parameter.searched]

    @property
    def constants(self) -> dict[str, Any]:
        return {name: p.spec["value"] for name, p in self.parameters.items() if not p.searched}

    def better(self, value: float, other: float) -> bool:
        return value < other if self.goal == "minimize" else value > other

    def reached_target(self, value: float | None) -> bool:
        if self.target is None or value is None or math.isnan(value):
            return False
        return value <= self.target if self.goal == "minimize" else value >= self.target


def spec_from_config(config: Any, source: str = "sweep configuration", parser=None) -> SweepSpec:
    """Check `config` against W&B's rules and against the train parser; raise `SweepConfigError` naming every key."""
    check_wandb_config(config, source)
    if parser is None:
        from fer_hf.config import make_parser

        parser = make_parser()
    problems: list[str] = []
    method = config["method"]
    if method not in METHODS:
        problems.append(f"method: {method!r} is valid on W&B, but fer_hf sweeps (and the local runner) use grid, "
                        f"random or bayes")
    for key in ("scheduler", "metrics", "job", "image_uri"):
        if key in config:
            problems.append(f"{key}: not supported by fer_hf sweeps; remove it")
    metric = config.get("metric")
    if metric is None:
        problems.append("metric: required here: the runner ranks trials by it (e.g. `metric: {name: eval/loss, "
                        "goal: minimize}`)")
        metric = {}
    else:
        try:
            local_metric(metric["name"])
            if metric["name"].startswith("test/"):
                problems.append(f"metric.name: {metric['name']} is the held-out test split, reported once at the "
                                f"end; a sweep that selects on it reports a biased test score. Use "
                                f"{metric['name'].replace('test/', 'eval/', 1)} (validation)")
        except ValueError as error:
            problems.append(f"metric.name: {error}")

    from fer_hf.config import argument_names

    names = argument_names(parser)
    parameters: dict[str, Parameter] = {}
    for name in sorted(config["parameters"]):
        parameter = _resolve_parameter(name, config["parameters"][name], [])
        assert parameter is not None  # check_wandb_config accepted it
        if parameter.distribution == "nested":
            problems.append(f"parameters.{name}: nested parameters reach the program as one dict; fer_hf.train "
                            f"takes flat arguments (--name=value)")
            continue
        action = _train_action(parser, name)
        if name not in names or action is None:
            problems.append(f"parameters.{name}: not an argument of fer_hf.train{_suggest(name, names)}; see "
                            f"`python -m fer_hf.train --help`")
            continue
        problems += _check_parameter_for_train(parameter, action)
        parameters[name] = parameter

    command = [str(item) for item in config.get("command", DEFAULT_COMMAND)]
    problems += _check_command_for_train(command, config.get("program"))
    if problems:
        raise SweepConfigError(source, problems)
    return SweepSpec(
        source=source,
        config=config,
        method=method,
        metric=metric["name"],
        goal=metric.get("goal", "minimize"),
        target=metric.get("target"),
        run_cap=config.get("run_cap"),
        parameters=parameters,
        command=command,
    )


def read_sweep_config(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such sweep file (see sweeps/*.yaml).")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SweepConfigError(str(path), [f"not valid YAML: {error}"]) from error
    if not isinstance(config, dict):
        raise SweepConfigError(str(path), [f"a sweep file maps top-level keys to values, got {type(config).__name__}"])
    return config


def load_sweep(path: str | os.PathLike, parser=None) -> SweepSpec:
    """Read a sweep YAML and check it (W&B syntax, train arguments, value types) before anything runs."""
    return spec_from_config(read_sweep_config(path), str(path), parser)


# ---------------------------------------------------------------------------------------------------------------
# The command a W&B agent would launch
# ---------------------------------------------------------------------------------------------------------------


def wandb_args(params: Mapping[str, Any]) -> list[str]:
    """`${args}` exactly as W&B's agent writes it: `--name=value` with Python's str() of each value."""
    return [f"--{name}={value}" for name, value in params.items()]


def build_command(
    spec: SweepSpec,
    params: Mapping[str, Any],
    *,
    args_json_file: str | os.PathLike | None = None,
    interpreter: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """The command W&B's agent would run for `params`, macros substituted the way the agent substitutes them.

    `${interpreter}` is the current Python (the agent writes `python`) so a local run uses this environment.
    """
    environ = os.environ if environ is None else environ
    flags = wandb_args(params)
    values = {
        "env": [] if sys.platform == "win32" else ["/usr/bin/env"],
        "interpreter": [interpreter or sys.executable],
        "program": [spec.program] if spec.program else [],
        "args": flags,
        "args_no_hyphens": [flag[2:] for flag in flags],
        "args_no_boolean_flags": [
            f"--{name}" if value is True else f"--{name}={value}"
            for name, value in params.items() if value is not False
        ],
        "args_json": [json.dumps(dict(params))],
        "args_json_file": [str(args_json_file)] if args_json_file else [],
        "args_no_equals": [token for name, value in params.items() for token in (f"--{name}", f"{value}")],
        "args_append_hydra": [f"+{flag[2:]}" for flag in flags],
        "args_override_hydra": [f"++{flag[2:]}" for flag in flags],
    }
    command: list[str] = []
    for item in spec.command:
        item = ENVVAR_MACRO.sub(lambda match: environ.get(match.group(1), match.group(1)), item)
        if item.startswith("${") and item.endswith("}"):
            command += values.get(item[2:-1], [])
        else:
            command.append(item)
    return command


def train_argv(spec: SweepSpec, params: Mapping[str, Any]) -> list[str]:
    """The arguments `fer_hf.train` receives for `params` (what comes after the module in the command)."""
    index = _train_entry_index(spec.command, spec.program)
    assert index is not None  # spec_from_config checked it
    return build_command(dataclasses.replace(spec, command=spec.command[index + 1:]), params)


def base_recipe(spec: SweepSpec) -> str | None:
    """The `--config` recipe the command passes to the train entry point, if any."""
    argv = spec.command[(_train_entry_index(spec.command, spec.program) or 0) + 1:]
    for i, item in enumerate(argv):
        if item == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if item.startswith("--config="):
            return item.split("=", 1)[1]
    return None


def agent_run_output_dir(output_dir: str, environ: Mapping[str, str] | None = None) -> str:
    """Under a W&B sweep agent every run gets the same command line; give each run its own `output_dir/<run id>`."""
    environ = os.environ if environ is None else environ
    run_id = environ.get("WANDB_RUN_ID") if environ.get("WANDB_SWEEP_ID") else None
    if not run_id or Path(output_dir).name == run_id:
        return output_dir
    return str(Path(output_dir) / run_id)
