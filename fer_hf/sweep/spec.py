"""W&B sweep files: checked against W&B's own schema without W&B's sweeps engine, and the command each run gets.

W&B's engine (`wandb[sweeps]`, package `sweeps`) pins numpy<2, so it cannot be a dependency; its JSON schema
(`wandb_sweep_schema.json`, copied from `sweeps` 0.3.0, MIT licence beside it) checks the syntax with `jsonschema`:
top-level keys, `method`, `metric`, every parameter form and `early_terminate`. Here are only the rules the schema
cannot express (min below max, grid-able parameters, the command macros). `spec_from_config` adds what fer_hf needs: a
metric the Trainer logs, a command that runs `fer_hf.train` with `${args}`. Whether each parameter is an argument of
`fer_hf.train` with a value it takes is for that entry point's own parser to say: the runner parses the trials'
arguments with it before the first trial starts (`fer_hf.sweep.runner.check_trial_arguments`), naming the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import sys
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema.exceptions import best_match

from fer_hf.config import load_yaml
from fer_hf.labels import LABEL_NAMES
from fer_hf.metrics import SUMMARY_KEYS

METHODS = ("grid", "random", "bayes")
SCHEMA = json.loads(Path(__file__).with_name("wandb_sweep_schema.json").read_text())
# The engine's two formats: they tell `min: 1` (int_uniform) from `min: 1.0` (uniform) when no distribution is named.
FORMATS = jsonschema.FormatChecker()
FORMATS.checks("float")(lambda value: isinstance(value, float))
FORMATS.checks("integer")(lambda value: isinstance(value, int))
VALIDATOR = jsonschema.Draft7Validator(SCHEMA, format_checker=FORMATS)
# distribution -> a validator of its parameter form (deprecated base-e forms among them; nested `parameters` aside).
FORMS = {
    (form.get("anyOf") or [form])[0]["properties"]["distribution"]["enum"][0]:
        jsonschema.Draft7Validator(form, format_checker=FORMATS)
    for name, form in SCHEMA["definitions"].items() if name.startswith("param_") and name != "param_dict"
}
GRID_DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "q_uniform")
# Command macros: the documented ones, then those W&B's agent also fills in (wandb_agent.py, sweeps/utils.py).
# `${envvar:NAME}` (NAME in capitals, as the agent's regex reads it) may also sit inside an item.
MACROS = ("env", "interpreter", "program", "args", "args_no_boolean_flags", "args_no_hyphens", "args_json",
          "args_json_file", "args_no_equals", "args_append_hydra", "args_override_hydra")
DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")
ENVVAR_MACRO = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")

# transformers' WandbCallback sends Trainer's logs to W&B with `eval_` -> `eval/`, `test_` -> `test/` and every
# other key under `train/`, except these, which go to the run summary under their own name.
SUMMARY_SCALARS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos")
EVAL_KEYS = ("loss", "runtime", "samples_per_second", "steps_per_second", *SUMMARY_KEYS,
             *(f"{metric}_{label}" for label in LABEL_NAMES for metric in ("precision", "recall", "f1")))
TRAIN_KEYS = ("loss", "grad_norm", "learning_rate", "epoch", "train_accuracy", "global_step")

_YAML_FLOAT_HINT = " (PyYAML, which wandb uses too, reads 1e-4 as a string: write 0.0001, 1.0e-4 or !!float 1e-4)"


class SweepConfigError(ValueError):
    """A sweep file that W&B or `fer_hf.train` would reject; the message names the file and every offending key."""

    def __init__(self, source: str, problems: Iterable[str]):
        self.source, self.problems = source, list(problems)
        super().__init__(f"{source}:\n" + "\n".join(f"  - {problem}" for problem in self.problems))


def _suggest(name: str, candidates: Collection[str]) -> str:
    prefixed = [c for c in candidates if c.startswith(name) and c != name]  # `adamw` -> adamw_torch first
    close = list(dict.fromkeys(prefixed[:3] + difflib.get_close_matches(name, candidates, n=3)))[:3]
    return f" (did you mean {', '.join(close)}?)" if close else ""


# ---- W&B syntax -----------------------------------------------------------------------------------------------


def _describe(error: jsonschema.ValidationError, where: tuple = ()) -> str:
    """One schema error as `key.path: what is wrong`, the deepest reason of an anyOf/oneOf."""
    while error.validator in ("anyOf", "oneOf") and error.context:
        if all(set(form) == {"required"} for form in error.validator_value):  # e.g. hyperband's two forms
            path = ".".join(str(part) for part in (*where, *error.absolute_path))
            return f"{path}: give {' or '.join(' and '.join(form['required']) for form in error.validator_value)}"
        error = best_match(error.context)
    path = ".".join(str(part) for part in (*where, *error.absolute_path))
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return f"{'.'.join(filter(None, (path, missing)))}: required"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = list(error.schema.get("properties", {}))
        unknown = [key for key in error.instance if key not in known]
        return "; ".join(f"{'.'.join(filter(None, (path, str(key))))}: unknown key{_suggest(str(key), known)}; W&B "
                         f"takes {', '.join(known)}" for key in unknown)
    if error.validator == "pattern" and error.schema_path and "propertyNames" in error.schema_path:
        return f"{path}.{error.instance}: not a valid parameter name (letters, digits, _ . -; not a digit first)"
    hint = _YAML_FLOAT_HINT if isinstance(error.instance, str) and "number" in str(error.validator_value) else ""
    if error.validator == "enum" and isinstance(error.instance, str):
        hint = _suggest(error.instance, [str(value) for value in error.validator_value])
    return f"{path or 'sweep'}: {error.message}{hint}"


@dataclass(frozen=True)
class Parameter:
    """One swept parameter: its W&B distribution and the spec with W&B's defaults filled in."""

    name: str
    distribution: str
    spec: dict[str, Any]


def _resolve_parameter(name: str, spec: Any, problems: list[str]) -> Parameter | None:
    """W&B's reading of one parameter spec; appends a message per problem (prefixed `parameters.<name>`)."""
    where = f"parameters.{name}"
    if isinstance(spec, dict) and "parameters" in spec:
        if extra := sorted(set(spec) - {"parameters"}):
            problems.append(f"{where}: nested `parameters` cannot sit beside {extra}")
        if not isinstance(nested := spec["parameters"], dict) or not nested:
            problems.append(f"{where}.parameters: expected a non-empty mapping of parameters")
        for key, value in nested.items() if isinstance(nested, dict) else ():
            _resolve_parameter(f"{name}.parameters.{key}", value, problems)
        return Parameter(name, "nested", dict(spec))
    if not isinstance(spec, dict):
        problems.append(f"{where}: expected a mapping like `values: [...]`, `value: x` or `min:`/`max:`, got {spec!r}")
        return None
    # W&B's implicit forms: the keys say the distribution when none is named.
    implied = ("constant" if "value" in spec else
               ("categorical_w_probabilities" if "probabilities" in spec else "categorical") if "values" in spec else
               ("int_uniform" if all(type(spec[k]) is int for k in ("min", "max")) else "uniform")  # bool is no int
               if {"min", "max"} <= set(spec) else None)
    distribution = spec.get("distribution", implied)
    if distribution is None:
        problems.append(f"{where}: give `value`, `values`, `min` and `max`, a `distribution`, or nested "
                        f"`parameters` (got keys {sorted(spec)})")
        return None
    # log_uniform & co.: in the docs and the schema; the engine rejects them
    if isinstance(distribution, str) and f"{distribution}_values" in FORMS:
        problems.append(f"{where}: uses {distribution}, where min/max specify base-e exponents; W&B rejects it. Use "
                        f"{distribution}_values to specify limit values.")
        return None
    if not isinstance(distribution, str) or distribution not in FORMS:
        known = [name for name in FORMS if f"{name}_values" not in FORMS]  # the deprecated ones left out
        problems.append(f"{where}.distribution: unknown distribution {distribution!r}"
                        f"{_suggest(str(distribution), known)}; W&B knows {', '.join(known)}")
        return None
    filled = {**spec, "distribution": distribution}  # named, so an anyOf reports the real fault
    errors = [_describe(error, ("parameters", name)) for error in FORMS[distribution].iter_errors(filled)]
    errors = list({error.split(":")[0]: error for error in reversed(errors)}.values())[::-1]  # type and format: one
    if not errors and "probabilities" in spec:
        if len(spec["probabilities"]) != len(spec["values"]):
            errors.append(f"{where}: values and probabilities are not the same length")
        elif not math.isclose(sum(spec["probabilities"]), 1.0, rel_tol=1e-6):
            errors.append(f"{where}.probabilities: {spec['probabilities']} do not sum to 1")
    if not errors and "min" in spec and spec["min"] >= spec["max"]:
        errors.append(f"{where}: min {spec['min']} is not less than max {spec['max']}")
    problems += errors
    form = FORMS[distribution].schema  # W&B's defaults for what the spec leaves out: mu, sigma, q
    filled = {key: sub["default"] for branch in form.get("anyOf", [form]) for key, sub in branch["properties"].items()
              if "default" in sub} | filled
    filled.pop("distribution")
    return None if errors else Parameter(name, distribution, filled)


def wandb_violations(config: Any) -> list[str]:
    """Everything W&B's sweep validation would reject in `config` (empty when valid), one message per key."""
    if not isinstance(config, dict):
        return [f"a sweep configuration is a mapping of top-level keys, got {type(config).__name__}"]
    # Parameters are described one by one below: the schema's anyOf over 19 forms says little about which was meant.
    problems = [_describe(error) for error in VALIDATOR.iter_errors(config)
                if not (len(error.absolute_path) > 1 and error.absolute_path[0] == "parameters")]
    method, scheduler = config.get("method"), config.get("scheduler")
    if method == "custom" and not isinstance(scheduler, dict):
        problems.append("method: custom needs a `scheduler` (engine optuna or ax)")
    if "scheduler" in config and "early_terminate" in config:
        problems.append("early_terminate: cannot be used together with `scheduler`")
    if "metric" in config and "metrics" in config:
        problems.append("metrics: cannot be set together with `metric`")
    if method == "bayes" and "metric" not in config:
        problems.append("metric: bayes search needs a `metric` (name and goal) to model")
    has_program = isinstance(config.get("program"), str)
    for i, item in enumerate(config["command"] if isinstance(config.get("command"), list) else []):
        text = ENVVAR_MACRO.sub("", str(item))
        macro = text[2:-1] if text.startswith("${") and text.endswith("}") and text.count("${") == 1 else None
        if not isinstance(item, (str, int, float)) or isinstance(item, bool):
            problems.append(f"command[{i}]: expected a string, got {item!r}")
        elif "${" in text and (macro is None or str(item) != text):
            problems.append(f"command[{i}]: {item!r}: a macro must be a whole item; W&B's agent replaces only items "
                            f"that are exactly a macro and passes this one verbatim (parameters reach the program "
                            f"through ${{args}})")
        elif macro is not None and macro not in MACROS:
            problems.append(f"command[{i}]: unknown macro {item!r}{_suggest(macro, MACROS)}; W&B would drop it "
                            f"silently. Macros: {', '.join('${' + m + '}' for m in MACROS)}, ${{envvar:NAME}}")
        elif macro == "program" and not has_program:
            problems.append(f"command[{i}]: ${{program}} needs a top-level `program`")
    if "command" not in config and not has_program and "job" not in config and "image_uri" not in config:
        problems.append("program: required; W&B's default command runs `${env} ${interpreter} ${program} ${args}`")
    parameters = config.get("parameters")
    if parameters is None and not (isinstance(scheduler, dict) and scheduler.get("search_space")):
        problems.append("parameters: required, the hyperparameters to search")
    elif isinstance(parameters, dict):
        for name, spec in parameters.items():
            if not isinstance(name, str):  # YAML reads `1:` as a number, which the schema's name pattern never sees
                problems.append(f"parameters.{name}: not a valid parameter name (letters, digits, _ . -)")
                continue
            parameter = _resolve_parameter(name, spec, problems)
            if method == "grid" and parameter and parameter.distribution not in (*GRID_DISTRIBUTIONS, "nested"):
                problems.append(f"parameters.{name}: a {parameter.distribution} parameter cannot be searched by "
                                f"grid; grid takes values, value, int_uniform or q_uniform")
    return problems


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
    hint = (f" (W&B receives Trainer's {name} as {name.replace('_', '/', 1)})" if name.startswith(("eval_", "test_"))
            else _suggest(name, known))
    raise ValueError(f"{name!r} is not a key the Trainer logs to W&B{hint}; transformers' WandbCallback logs "
                     f"eval_* as eval/*, test_* as test/* and other training logs as train/*")


def _train_entry_index(command: list[str], program: str | None) -> int | None:
    """Index of the item after which the train entry point's own arguments start."""
    for i, item in enumerate(command):
        path = ((program or "") if item == "${program}" else item).replace("\\", "/")
        if item == "fer_hf.train" and command[i - 1:i] == ["-m"] or path.endswith("fer_hf/train.py"):
            return i
    return None


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
        return [name for name, parameter in self.parameters.items() if parameter.distribution != "constant"]

    @property
    def constants(self) -> dict[str, Any]:
        return {name: p.spec["value"] for name, p in self.parameters.items() if p.distribution == "constant"}

    def reached_target(self, value: float | None) -> bool:
        if self.target is None or value is None or math.isnan(value):
            return False
        return value <= self.target if self.goal == "minimize" else value >= self.target


def spec_from_config(config: Any, source: str = "sweep configuration") -> SweepSpec:
    """Check `config` against W&B's rules and what fer_hf runs; raise `SweepConfigError` naming every key."""
    if problems := wandb_violations(config):
        raise SweepConfigError(source, problems)
    method = config["method"]
    if method not in METHODS:
        problems.append(f"method: {method!r} is valid on W&B, but fer_hf sweeps (and the local runner) use grid, "
                        f"random or bayes")
    unsupported = [key for key in ("scheduler", "metrics", "job", "image_uri") if key in config]
    problems += [f"{key}: not supported by fer_hf sweeps; remove it" for key in unsupported]
    metric = config.get("metric", {})
    if not metric:
        problems.append("metric: required here: the runner ranks trials by it (e.g. `metric: {name: eval/loss, "
                        "goal: minimize}`)")
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
    for name in sorted(config.get("parameters") or {}):  # none: a scheduler's search_space, refused above
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
    if "${args}" not in command:
        problems.append("command: must pass the parameters with ${args} (fer_hf.train reads --name=value flags)")
    elif command.count("${args}") > 1:
        problems.append("command: ${args} appears more than once")
    for other in [item for item in command if item.startswith("${args_")]:
        problems.append(f"command: {other} is not a form fer_hf.train reads; use ${{args}} (--name=value)")
    index = _train_entry_index(command, config.get("program"))
    if index is None:
        problems.append("command: must run the train entry point, e.g. `accelerate launch -m fer_hf.train --config "
                        "RECIPE ${args}` (or `program: fer_hf/train.py` with ${program})")
    elif "${args}" in command and command.index("${args}") < index:
        problems.append("command: ${args} must come after fer_hf.train, where the train parser reads it")
    if problems:
        raise SweepConfigError(source, problems)
    run_cap = int(config["run_cap"]) if "run_cap" in config else None  # the schema's integer takes 5.0 too
    return SweepSpec(source=source, config=config, method=method, metric=metric["name"],
                     goal=metric.get("goal", "minimize"), target=metric.get("target"), run_cap=run_cap,
                     parameters=parameters, command=command)


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read a sweep YAML and check it (W&B syntax, metric, command) before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such sweep file (see sweeps/*.yaml).")
    try:
        config = load_yaml(path.read_text())
    except yaml.YAMLError as error:
        raise SweepConfigError(str(path), [f"not valid YAML: {error}"]) from error
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
    values = {"env": [] if sys.platform == "win32" else ["/usr/bin/env"], "args": wandb_args(params),
              "interpreter": [interpreter or sys.executable], "program": [spec.program] if spec.program else []}
    command: list[str] = []
    for item in spec.command:
        item = ENVVAR_MACRO.sub(lambda match: environ.get(match.group(1), match.group(1)), item)
        command += values.get(item[2:-1], []) if item.startswith("${") and item.endswith("}") else [item]
    return command


def train_argv(spec: SweepSpec, params: Mapping[str, Any]) -> list[str]:
    """The arguments `fer_hf.train` receives for `params` (what comes after the module in the command)."""
    start = _train_entry_index(spec.command, spec.program) + 1  # spec_from_config checked there is one
    return build_command(dataclasses.replace(spec, command=spec.command[start:]), params)


def base_recipe(spec: SweepSpec) -> str | None:
    """The `--config` recipe the command passes to the train entry point, if any."""
    argv = spec.command[(_train_entry_index(spec.command, spec.program) or 0) + 1:]
    for i, item in enumerate(argv):
        if item == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if item.startswith("--config="):
            return item.split("=", 1)[1]
    return None
