"""W&B sweep files: the documented syntax, checked without W&B's sweeps engine, and the command each run gets.

W&B's own engine (`wandb[sweeps]`, package `sweeps`) pins numpy<2, so it cannot be a dependency. The rules below follow
W&B's sweep configuration reference and the engine's JSON schema (https://docs.wandb.ai/guides/sweeps/sweep-config-keys):
top-level keys, `method`, `metric`, the parameter forms (`value`, `values`, `min`/`max`, a `distribution`, nested
`parameters`), `early_terminate` and the command macros. `spec_from_config` adds what fer_hf needs: a metric the
Trainer logs, a command that runs `fer_hf.train` with `${args}`. Whether each parameter is an argument of
`fer_hf.train` with a value it takes is for that entry point's own parser to say: the runner parses the trials'
arguments with it before the first trial starts (`fer_hf.sweep.runner.check_trial_arguments`), naming the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
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
_RANGE, _NORMAL, _BETA = {"min", "max"}, {"mu", "sigma"}, {"a", "b"}
DISTRIBUTIONS: dict[str, tuple[set[str], set[str]]] = {
    "constant": ({"value"}, set()), "categorical": ({"values"}, set()),
    "categorical_w_probabilities": ({"values", "probabilities"}, set()),
    "int_uniform": (_RANGE, set()), "uniform": (_RANGE, set()), "q_uniform": (_RANGE, {"q"}),
    "log_uniform_values": (_RANGE, set()), "q_log_uniform_values": (_RANGE, {"q"}),
    "inv_log_uniform_values": (_RANGE, set()),
    "normal": (set(), _NORMAL), "q_normal": (set(), _NORMAL | {"q"}),
    "log_normal": (set(), _NORMAL), "q_log_normal": (set(), _NORMAL | {"q"}),
    "beta": (set(), _BETA), "q_beta": (set(), _BETA | {"q"}),
}
# The engine rejects these (min/max were base-e exponents); the docs still list them.
DEPRECATED_DISTRIBUTIONS = {
    "log_uniform": "log_uniform_values", "inv_log_uniform": "inv_log_uniform_values",
    "q_log_uniform": "q_log_uniform_values",
}
DEFAULTS = {"q": 1.0, "mu": 0.0, "sigma": 1.0, "a": 1.0, "b": 1.0}
GRID_DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "q_uniform")

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


# ---- W&B syntax -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    """One swept parameter: its W&B distribution and the spec with W&B's defaults filled in."""

    name: str
    distribution: str
    spec: dict[str, Any]

    @property
    def searched(self) -> bool:
        return self.distribution != "constant"


def _distribution_of(spec: dict, where: str, problems: list[str]) -> str | None:
    """The distribution W&B reads `spec` as (implicit from its keys, or named); None after a problem."""
    distribution = spec.get("distribution")
    if distribution is None:
        if "value" in spec:
            return "constant"
        if "values" in spec:
            return "categorical_w_probabilities" if "probabilities" in spec else "categorical"
        if "min" in spec and "max" in spec:
            return "int_uniform" if _is_int(spec["min"]) and _is_int(spec["max"]) else "uniform"
        problems.append(f"{where}: give `value`, `values`, `min` and `max`, a `distribution`, or nested "
                        f"`parameters` (got keys {sorted(spec)})")
    elif distribution in DEPRECATED_DISTRIBUTIONS:
        problems.append(f"{where}: uses {distribution}, where min/max specify base-e exponents; W&B rejects it. Use "
                        f"{DEPRECATED_DISTRIBUTIONS[distribution]} to specify limit values.")
    elif distribution not in DISTRIBUTIONS:
        problems.append(f"{where}.distribution: unknown distribution {distribution!r}"
                        f"{_suggest(str(distribution), DISTRIBUTIONS)}; W&B knows {', '.join(DISTRIBUTIONS)}")
    elif distribution == "categorical" and "probabilities" in spec:
        problems.append(f"{where}: `probabilities` go without `distribution: categorical` (W&B's schema rejects both)")
    else:
        return distribution
    return None


def _resolve_parameter(name: str, spec: Any, problems: list[str]) -> Parameter | None:
    """W&B's reading of one parameter spec; appends a message per problem (prefixed `parameters.<name>`)."""
    where = f"parameters.{name}"
    if not isinstance(spec, dict):
        problems.append(f"{where}: expected a mapping such as `values: [...]`, `value: x` or `min:`/`max:`, "
                        f"got {spec!r}")
        return None
    if "parameters" in spec:
        if extra := sorted(set(spec) - {"parameters"}):
            problems.append(f"{where}: nested `parameters` cannot sit beside {extra}")
        nested = spec["parameters"]
        if not isinstance(nested, dict) or not nested:
            problems.append(f"{where}.parameters: expected a non-empty mapping of parameters")
        else:
            for key, value in nested.items():
                _resolve_parameter(f"{name}.parameters.{key}", value, problems)
        return Parameter(name, "nested", dict(spec))
    distribution = _distribution_of(spec, where, problems)
    if distribution is None:
        return None

    required, optional = DISTRIBUTIONS[distribution]
    before = len(problems)
    if unknown := sorted(set(spec) - required - optional - {"distribution"}):
        problems.append(f"{where}: {distribution} takes {sorted(required | optional)}, not {unknown}")
    if missing := sorted(required - set(spec)):
        problems.append(f"{where}: {distribution} needs {missing}")
    filled = {key: spec.get(key, DEFAULTS.get(key)) for key in sorted(required | optional)}
    _check_values(where, filled, PARAMETER_RULES, problems)
    if len(problems) > before:
        return None
    if "probabilities" in filled and len(filled["probabilities"]) != len(filled["values"]):
        problems.append(f"{where}: values and probabilities are not the same length")
    elif "probabilities" in filled and not math.isclose(sum(filled["probabilities"]), 1.0, rel_tol=1e-6):
        problems.append(f"{where}.probabilities: {filled['probabilities']} do not sum to 1")
    if distribution == "int_uniform" and not (_is_int(filled["min"]) and _is_int(filled["max"])):
        problems.append(f"{where}: int_uniform needs integer min and max, got {filled['min']!r} and {filled['max']!r}")
    if "min" in filled and filled["min"] >= filled["max"]:
        problems.append(f"{where}: min {filled['min']} is not less than max {filled['max']}")
    if distribution.endswith("_values") and filled["min"] <= 0:
        problems.append(f"{where}.min: {distribution} needs min > 0, got {filled['min']}")
    return Parameter(name, distribution, filled) if len(problems) == before else None


def _one_of(*allowed: Any) -> Callable[[Any], bool]:
    return lambda value: value in allowed


Rules = dict[str, tuple[Callable[[Any], bool], str]]  # key -> (is the value valid?, what W&B expects)
PARAMETER_RULES: Rules = {
    "values": (lambda value: isinstance(value, list) and bool(value), "a non-empty list"),
    "probabilities": (lambda value: isinstance(value, list) and all(_is_number(p) and p >= 0 for p in value),
                      "a list of non-negative numbers"),
    **dict.fromkeys(("min", "max", "mu"), (_is_number, "a number")),
    **dict.fromkeys(("sigma", "a", "b"), (lambda value: _is_number(value) and value >= 0, "a number >= 0")),
    "q": (lambda value: _is_number(value) and value > 0, "a number > 0"),
}
METRIC_RULES: Rules = {
    "name": (lambda value: isinstance(value, str) and bool(value), "the name of a logged metric"),
    "goal": (_one_of(*GOALS), "minimize or maximize"),
    "target": (_is_number, "a number"),
    "impute": (_one_of("latest", "best", "worst"), "latest, best or worst"),
    "impute_while_running": (_one_of("latest", "best", "worst", "false"), "latest, best, worst or false"),
}
HYPERBAND_RULES: Rules = {
    "type": (_one_of("hyperband"), "hyperband, the only type W&B supports"),
    "min_iter": (lambda value: _is_int(value) and value >= 1, "an integer >= 1"),
    "max_iter": (_is_int, "an integer"),
    "s": (_is_number, "a number"),
    "eta": (lambda value: _is_number(value) and value > 1, "a number > 1"),
    "strict": (lambda value: isinstance(value, bool), "true or false"),
}


def _check_values(where: str, config: dict, rules: Rules, problems: list[str]) -> None:
    for key, (valid, expected) in rules.items():
        if key in config and not valid(config[key]):
            hint = _YAML_FLOAT_HINT if isinstance(config[key], str) and "number" in expected else ""
            problems.append(f"{where}.{key}: expected {expected}, got {config[key]!r}{hint}")


def _check_section(section: str, config: Any, rules: Rules, required: str, problems: list[str]) -> None:
    """A mapping such as `metric` against `rules`: no unknown key, the required one, each value's kind."""
    if not isinstance(config, dict):
        problems.append(f"{section}: expected a mapping of {', '.join(rules)}, got {config!r}")
        return
    if unknown := sorted(set(config) - set(rules)):
        problems.append(f"{section}: unknown key(s) {unknown}; W&B takes {', '.join(rules)}")
    if required not in config:
        problems.append(f"{section}.{required}: required, {rules[required][1]}")
    _check_values(section, config, rules, problems)


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
    method, scheduler = config.get("method"), config.get("scheduler")
    if method is None:
        problems.append("method: required, one of grid, random, bayes")
    elif method not in (*METHODS, "custom"):
        problems.append(f"method: {method!r} is not a W&B search method{_suggest(str(method), METHODS)}; "
                        f"use grid, random or bayes")
    elif method == "custom" and not isinstance(scheduler, dict):
        problems.append("method: custom needs a `scheduler` (engine optuna or ax)")
    if "scheduler" in config:
        engine = scheduler.get("engine") if isinstance(scheduler, dict) else None
        if engine not in ("wandb", "optuna", "ax"):
            problems.append(f"scheduler.engine: must be wandb, optuna or ax, got {engine!r}")
        if "early_terminate" in config:
            problems.append("early_terminate: cannot be used together with `scheduler`")
    if "metric" in config and "metrics" in config:
        problems.append("metrics: cannot be set together with `metric`")
    if "metric" in config:
        _check_section("metric", config["metric"], METRIC_RULES, "name", problems)
    elif method == "bayes":
        problems.append("metric: bayes search needs a `metric` (name and goal) to model")
    if "run_cap" in config and not (_is_int(config["run_cap"]) and config["run_cap"] > 0):
        problems.append(f"run_cap: expected a positive integer, got {config['run_cap']!r}")
    if "controller" in config and not (isinstance(config["controller"], dict)
                                       and config["controller"].get("type") in ("local", "cloud")):
        problems.append(f"controller: expected `type: local` or `type: cloud`, got {config['controller']!r}")
    if "early_terminate" in config:
        early = config["early_terminate"]
        _check_section("early_terminate", early, HYPERBAND_RULES, "type", problems)
        if isinstance(early, dict) and "min_iter" not in early and not ("max_iter" in early and "s" in early):
            problems.append("early_terminate: give `min_iter`, or `max_iter` with `s`")
    has_program = isinstance(config.get("program"), str)
    if "command" in config:
        _check_command(config["command"], has_program, problems)
    elif not has_program and "job" not in config and "image_uri" not in config:
        problems.append("program: required; W&B's default command runs `${env} ${interpreter} ${program} ${args}`")

    parameters = config.get("parameters")
    if parameters is None:
        if not (isinstance(scheduler, dict) and scheduler.get("search_space")):
            problems.append("parameters: required, the hyperparameters to search")
    elif not isinstance(parameters, dict) or not parameters:
        problems.append(f"parameters: expected a non-empty mapping of parameter names to specs, got {parameters!r}")
    else:
        for name, spec in parameters.items():
            if not isinstance(name, str) or not PARAMETER_NAME.match(name):
                problems.append(f"parameters.{name}: not a valid parameter name (letters, digits, _ . -)")
                continue
            parameter = _resolve_parameter(name, spec, problems)
            if method == "grid" and parameter and parameter.distribution not in (*GRID_DISTRIBUTIONS, "nested"):
                problems.append(f"parameters.{name}: a {parameter.distribution} parameter cannot be searched by "
                                f"grid; grid takes values, value, int_uniform or q_uniform")
    return problems


def check_wandb_config(config: Any, source: str = "sweep configuration") -> None:
    """Raise `SweepConfigError` listing every rule of W&B's sweep syntax that `config` breaks."""
    if problems := wandb_violations(config):
        raise SweepConfigError(source, problems)


# ---- what fer_hf runs ------------------------------------------------------------------------------------------


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
    """A checked sweep file: W&B-valid, ranked by a metric the Trainer logs, run by `fer_hf.train`'s command."""

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


def spec_from_config(config: Any, source: str = "sweep configuration") -> SweepSpec:
    """Check `config` against W&B's rules and what fer_hf runs; raise `SweepConfigError` naming every key."""
    check_wandb_config(config, source)
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

    parameters: dict[str, Parameter] = {}
    for name in sorted(config["parameters"]):
        parameters[name] = parameter = _resolve_parameter(name, config["parameters"][name], [])
        if parameter.distribution == "nested":
            problems.append(f"parameters.{name}: nested parameters reach the program as one dict; fer_hf.train "
                            f"takes flat arguments (--name=value)")
        # W&B's agent writes str(value): `--name=None` or `--name=['a', 'b']` is a string the parser may well accept.
        spec = parameter.spec
        for value in spec.get("values", [spec["value"]] if "value" in spec else []):
            if value is None or isinstance(value, (list, dict)):
                problems.append(f"parameters.{name}: W&B passes {value!r} as `--{name}={value}`, not as that value; "
                                f"use a scalar (leave {name} out to keep the recipe's value)")

    command = [str(item) for item in config.get("command", DEFAULT_COMMAND)]
    problems += _check_command_for_train(command, config.get("program"))
    if problems:
        raise SweepConfigError(source, problems)
    return SweepSpec(source=source, config=config, method=method, metric=metric["name"],
                     goal=metric.get("goal", "minimize"), target=metric.get("target"), run_cap=config.get("run_cap"),
                     parameters=parameters, command=command)


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read a sweep YAML and check it (W&B syntax, metric, command) before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such sweep file (see sweeps/*.yaml).")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SweepConfigError(str(path), [f"not valid YAML: {error}"]) from error
    if not isinstance(config, dict):
        raise SweepConfigError(str(path), [f"a sweep file maps top-level keys to values, got {type(config).__name__}"])
    return spec_from_config(config, str(path))


# ---- the command a W&B agent would launch ----------------------------------------------------------------------


def wandb_args(params: Mapping[str, Any]) -> list[str]:
    """`${args}` exactly as W&B's agent writes it: `--name=value` with Python's str() of each value."""
    return [f"--{name}={value}" for name, value in params.items()]


def build_command(spec: SweepSpec, params: Mapping[str, Any], *, interpreter: str | None = None,
                  environ: Mapping[str, str] | None = None) -> list[str]:
    """The command W&B's agent would run for `params`, macros substituted the way the agent substitutes them.

    `${interpreter}` is the current Python (the agent writes `python`) so a local run uses this environment. The other
    `${args_*}` forms never reach here: `spec_from_config` refuses them, fer_hf.train reads only `${args}`.
    """
    environ = os.environ if environ is None else environ
    values = {
        "env": [] if sys.platform == "win32" else ["/usr/bin/env"],
        "interpreter": [interpreter or sys.executable],
        "program": [spec.program] if spec.program else [],
        "args": wandb_args(params),
    }
    command: list[str] = []
    for item in spec.command:
        item = ENVVAR_MACRO.sub(lambda match: environ.get(match.group(1), match.group(1)), item)
        command += values.get(item[2:-1], []) if item.startswith("${") and item.endswith("}") else [item]
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
