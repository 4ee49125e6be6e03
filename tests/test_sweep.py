"""Sweep files and the local runner, without training: W&B syntax, train arguments, grid order, proposals, resume.

Trials here run a stand-in for `fer_hf.train` (a few lines of Python that write all_results.json), so the runner's
bookkeeping is tested in seconds; tests/test_sweep_run.py runs real trials.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import yaml

from fer_hf.config import argument_names, make_parser, parse_args, read_recipe
from fer_hf.run_dir import agent_run_output_dir
from fer_hf.sweep import runner
from fer_hf.sweep.__main__ import main as sweep_main
from fer_hf.sweep.report import format_table, rank
from fer_hf.sweep.runner import SweepFolder, TrialRecord
from fer_hf.sweep.search import Observation, OptunaSearch, grid
from fer_hf.sweep.spec import (
    SweepConfigError,
    base_recipe,
    build_command,
    local_metric,
    spec_from_config,
    train_argv,
    wandb_args,
    wandb_violations,
)

REPO = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml"))
PARSER = make_parser()


def _spec(config: dict):
    return spec_from_config(config, "test.yaml")


# ---- the sweep files ------------------------------------------------------------------------------------------


def test_the_three_paper_stages_are_there():
    assert {path.stem for path in SWEEP_FILES} >= {"optimizers", "bayes", "grid"}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda path: path.name)
def test_sweep_file_is_valid_wandb_syntax_and_every_parameter_is_a_train_argument(path):
    config = yaml.safe_load(path.read_text())
    assert wandb_violations(config) == []
    spec = spec_from_config(config, str(path))
    assert set(spec.parameters) <= argument_names(PARSER)
    assert spec.metric == "eval/loss" and spec.goal == "minimize"  # the paper selects on validation loss
    assert spec.command[:4] == ["accelerate", "launch", "-m", "fer_hf.train"] and spec.command[-1] == "${args}"
    read_recipe(REPO / base_recipe(spec), PARSER)  # the base recipe exists and is itself valid


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda path: path.name)
def test_every_command_a_sweep_produces_parses_with_the_train_parser(path, monkeypatch):
    monkeypatch.chdir(REPO)  # the W&B agent runs from the repository root; the base recipe path is relative to it
    spec = spec_from_config(yaml.safe_load(path.read_text()), str(path))
    combinations = grid(spec)  # grid: the runs; bayes: every point of its discrete space
    assert combinations
    for params in combinations:
        model_args, data_args, training_args = parse_args(train_argv(spec, params))
        parsed = {**vars(model_args), **vars(data_args), **training_args.to_dict()}
        for name, value in params.items():
            got = parsed[name]
            assert (got[0] if isinstance(got, list) else got) == value, name


def test_paper_stages_search_what_the_paper_searched():
    specs = {path.stem: spec_from_config(yaml.safe_load(path.read_text()), str(path)) for path in SWEEP_FILES}
    optimizers, bayes, stage3 = specs["optimizers"], specs["bayes"], specs["grid"]
    assert [p["optim"] for p in grid(optimizers)] == ["sgd", "adamw_torch", "adafactor"]
    assert optimizers.constants.items() >= {"learning_rate": 0.0005, "lr_scheduler_type": "constant",
                                            "num_train_epochs": 10, "per_device_train_batch_size": 64}.items()
    assert bayes.method == "bayes" and bayes.run_cap == 130 and bayes.searched == ["learning_rate", "weight_decay"]
    assert bayes.parameters["learning_rate"].spec["values"] == [0.0001, 0.0005, 0.001, 0.003, 0.005]
    assert bayes.parameters["weight_decay"].spec["values"] == [0.0, 0.0001]
    assert bayes.constants["optim"] == "adafactor" and bayes.constants["per_device_train_batch_size"] == 64
    assert stage3.method == "grid" and len(grid(stage3)) == 16
    assert {p["lr_scheduler_type"] for p in grid(stage3)} == {"constant", "linear"}
    assert stage3.constants.items() >= {"optim": "adafactor", "num_train_epochs": 15,
                                        "per_device_train_batch_size": 128}.items()


# ---- W&B's documented syntax ----------------------------------------------------------------------------------

# From https://docs.wandb.ai/guides/sweeps/define-sweep-configuration and .../sweep-config-keys
DOCUMENTED_VALID = {
    "basic bayes": """
        program: train.py
        name: sweepdemo
        method: bayes
        metric: {goal: minimize, name: validation_loss}
        parameters:
          learning_rate: {min: 0.0001, max: 0.1}
          batch_size: {values: [16, 32, 64]}
          epochs: {values: [5, 10, 15]}
          optimizer: {values: ["adam", "sgd"]}
    """,
    "random with distributions": """
        program: train.py
        method: random
        metric: {goal: minimize, name: loss}
        parameters:
          batch_size: {distribution: q_log_uniform_values, max: 256, min: 32, q: 8}
          dropout: {values: [0.3, 0.4, 0.5]}
          epochs: {value: 1}
          fc_layer_size: {values: [128, 256, 512]}
          learning_rate: {distribution: uniform, max: 0.1, min: 0}
          optimizer: {values: ["adam", "sgd"]}
    """,
    "bayes hyperband (max_iter)": """
        program: train.py
        method: bayes
        metric: {goal: minimize, name: val_loss}
        parameters:
          dropout: {values: [0.15, 0.2, 0.25, 0.3, 0.4]}
          decay: {values: [1e-5, 1e-6, 1e-7]}
          epochs: {value: 27}
        early_terminate: {type: hyperband, s: 2, eta: 3, max_iter: 27}
    """,
    "hyperband (min_iter)": """
        program: train.py
        method: random
        parameters: {x: {min: 1, max: 9}}
        early_terminate: {type: hyperband, min_iter: 3}
    """,
    "nested parameters": """
        program: train.py
        method: random
        parameters:
          nested_param:
            parameters:
              learning_rate: {values: [0.01, 0.001]}
              double_nested_param: {parameters: {x: {value: 0.9}, y: {value: 0.8}}}
    """,
    "every distribution": """
        program: train.py
        method: random
        parameters:
          a: {distribution: constant, value: 1}
          b: {distribution: categorical, values: [1, 2]}
          c: {distribution: int_uniform, min: 1, max: 4}
          d: {distribution: uniform, min: 0.0, max: 1.0}
          e: {distribution: q_uniform, min: 0, max: 10, q: 2}
          f: {distribution: log_uniform_values, min: 0.0001, max: 0.1}
          g: {distribution: q_log_uniform_values, min: 1, max: 100}
          h: {distribution: inv_log_uniform_values, min: 0.01, max: 1}
          i: {distribution: normal, mu: 100, sigma: 10}
          j: {distribution: q_normal}
          k: {distribution: log_normal, mu: 0, sigma: 1}
          l: {distribution: q_log_normal, q: 0.5}
          m: {values: [1, 2, 3, 4, 5], probabilities: [0.1, 0.2, 0.1, 0.25, 0.35]}
    """,
    "command with macros": """
        program: train.py
        method: grid
        parameters: {x: {values: [1, 2]}, y: {distribution: int_uniform, min: 1, max: 3}}
        command: ["${env}", "${interpreter}", "${program}", "-b", "your-training-config", "${args}"]
    """,
    "command with the other macros": """
        program: train.py
        method: grid
        run_cap: 4
        parameters: {x: {values: [1, 2]}}
        command: ["${env}", "python", "${program}", "${args_no_hyphens}", "${args_json_file}", "--home=${envvar:HOME}"]
    """,
}

DOCUMENTED_INVALID = {
    "no method": ("program: t.py\nparameters: {x: {value: 1}}", "method: required"),
    "bad method": ("program: t.py\nmethod: grids\nparameters: {x: {value: 1}}", "method: 'grids'"),
    "typo in a top-level key": ("program: t.py\nmethod: grid\nparamters: {x: {value: 1}}", "paramters"),
    "no parameters": ("program: t.py\nmethod: grid", "parameters: required"),
    "no program nor command": ("method: grid\nparameters: {x: {value: 1}}", "program: required"),
    "bayes without metric": ("program: t.py\nmethod: bayes\nparameters: {x: {values: [1, 2]}}", "metric: bayes"),
    "metric without name": ("program: t.py\nmethod: bayes\nmetric: {goal: minimize}\nparameters: {x: {value: 1}}",
                            "metric.name"),
    "bad goal": ("program: t.py\nmethod: grid\nmetric: {name: l, goal: minimise}\nparameters: {x: {value: 1}}",
                 "metric.goal"),
    "min not below max": ("program: t.py\nmethod: random\nparameters: {lr: {min: 0.1, max: 0.01}}",
                          "parameters.lr: min 0.1 is not less than max 0.01"),
    "probabilities off": ("program: t.py\nmethod: random\nparameters: {x: {values: [1, 2], "
                          "probabilities: [0.5, 0.6]}}", "parameters.x.probabilities"),
    "grid over a continuous range": ("program: t.py\nmethod: grid\nparameters: {lr: {min: 0.1, max: 1.0}}",
                                     "parameters.lr: a uniform parameter cannot be searched by grid"),
    "unknown distribution": ("program: t.py\nmethod: random\nparameters: {x: {distribution: gaussian}}",
                             "parameters.x.distribution: unknown distribution 'gaussian'"),
    "deprecated log_uniform": ("program: t.py\nmethod: random\nparameters: {x: {distribution: log_uniform, min: -5, "
                               "max: 0}}", "Use log_uniform_values"),
    "value and values": ("program: t.py\nmethod: grid\nparameters: {x: {value: 1, values: [1, 2]}}",
                         "parameters.x.values: unknown key"),
    "empty values": ("program: t.py\nmethod: grid\nparameters: {x: {values: []}}", "parameters.x.values"),
    "int_uniform of floats": ("program: t.py\nmethod: random\nparameters: {x: {distribution: int_uniform, min: 0.5, "
                              "max: 3}}", "parameters.x.min: 0.5 is not of type 'integer'"),
    "hyperband without brackets": ("program: t.py\nmethod: random\nparameters: {x: {value: 1}}\nearly_terminate: "
                                   "{type: hyperband, eta: 3}", "early_terminate: give max_iter and s or min_iter"),
    "hyperband without type": ("program: t.py\nmethod: random\nparameters: {x: {value: 1}}\nearly_terminate: "
                               "{min_iter: 3}", "early_terminate.type"),
    "run_cap zero": ("program: t.py\nmethod: grid\nrun_cap: 0\nparameters: {x: {value: 1}}", "run_cap"),
    "method typo": ("program: t.py\nmethod: bayesian\nparameters: {x: {value: 1}}", "(did you mean bayes?)"),
    "bad parameter name": ("program: t.py\nmethod: grid\nparameters: {1x: {value: 1}}",
                           "parameters.1x: not a valid parameter name"),
    "numeric parameter name": ("program: t.py\nmethod: grid\nparameters: {1: {value: 1}}",
                               "parameters.1: not a valid parameter name"),
    "distribution as a list": ("program: t.py\nmethod: random\nparameters: {x: {distribution: [uniform], min: 0, "
                               "max: 1}}", "unknown distribution ['uniform']"),
    "unknown macro": ("method: grid\nparameters: {x: {value: 1}}\ncommand: [python, t.py, '${arg}']",
                      "unknown macro '${arg}' (did you mean args"),
    # W&B's docs show `--batch_size=${batch_size}`, but wandb's agent substitutes only whole-item macros.
    "macro inside an item": ("method: grid\nparameters: {x: {value: 1}}\ncommand: [python, t.py, '--x=${x}']",
                             "a macro must be a whole item"),
    "${program} without program": ("method: grid\nparameters: {x: {value: 1}}\ncommand: [python, '${program}']",
                                   "${program} needs a top-level `program`"),
}


@pytest.mark.parametrize("name", DOCUMENTED_VALID)
def test_documented_wandb_examples_are_valid(name):
    assert wandb_violations(yaml.safe_load(DOCUMENTED_VALID[name])) == []


@pytest.mark.parametrize("name", DOCUMENTED_INVALID)
def test_invalid_wandb_configs_are_rejected_naming_the_key(name):
    text, message = DOCUMENTED_INVALID[name]
    problems = wandb_violations(yaml.safe_load(text))
    assert any(message in problem for problem in problems), problems


# ---- what fer_hf.train makes of a sweep -----------------------------------------------------------------------

TINY = {
    "name": "tiny",
    "program": "fer_hf/train.py",
    "method": "grid",
    "metric": {"name": "eval/loss", "goal": "minimize"},
    "parameters": {"learning_rate": {"values": [0.001, 0.01]}, "weight_decay": {"values": [0.0, 0.1]}},
    "command": ["${env}", "${interpreter}", "-m", "fer_hf.train", "${args}"],
}


def _with(**changes) -> dict:
    config = copy.deepcopy(TINY)
    for key, value in changes.items():
        if key.startswith("param_"):
            config["parameters"][key[len("param_"):]] = value
        elif value is None:
            config.pop(key)
        else:
            config[key] = value
    return config


@pytest.mark.parametrize(
    ("config", "message"),
    [
        # W&B's agent writes str(value): these would reach fer_hf.train as the strings 'None' and "['labels', 'x']".
        (_with(param_hub_model_id={"value": None}), "parameters.hub_model_id: W&B passes None as `--hub_model_id"),
        (_with(param_label_names={"value": ["labels", "x"]}), "use a scalar"),
        (_with(param_model={"parameters": {"depth": {"value": 18}}}), "nested parameters"),
        (_with(metric=None), "metric: required here"),
        (_with(metric={"name": "eval_loss"}), "W&B receives Trainer's eval_loss as eval/loss"),
        (_with(metric={"name": "eval/acuracy", "goal": "maximize"}), "did you mean eval/accuracy"),
        (_with(metric={"name": "test/accuracy", "goal": "maximize"}), "Use eval/accuracy (validation)"),
        (_with(method="bayesian"), "method: 'bayesian'"),
        (_with(method="random", param_learning_rate={"min": "1e-4", "max": 0.1}),
         "parameters.learning_rate.min: '1e-4' is not of type 'number' (PyYAML"),
        (_with(command=["python", "-m", "fer_hf.train"]), "must pass the parameters with ${args}"),
        (_with(command=["python", "other.py", "${args}"]), "must run the train entry point"),
        (_with(command=["python", "-m", "fer_hf.train", "${args_json}"]), "${args_json} is not a form"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_bad_sweep_is_rejected_naming_the_key(config, message):
    with pytest.raises(SweepConfigError) as error:
        _spec(config)
    assert message in str(error.value)
    assert "test.yaml" in str(error.value)


def test_train_parser_reads_wandb_flag_form_for_every_kind_of_argument():
    # W&B writes `--name=value` with Python's str(): True/False for booleans, a single value for list arguments.
    argv = wandb_args({"learning_rate": 0.0005, "seed": 3, "pretrained": False, "load_best_model_at_end": True,
                       "optim": "adafactor", "report_to": "wandb", "label_names": "labels", "weight_decay": 1e-05,
                       "eval_strategy": "epoch", "save_strategy": "epoch", "metric_for_best_model": "loss"})
    model_args, _, training_args = parse_args([*argv, "--output_dir", "unused"])
    assert model_args.pretrained is False and training_args.load_best_model_at_end is True
    assert training_args.learning_rate == 0.0005 and training_args.weight_decay == 1e-05 and training_args.seed == 3
    assert training_args.optim.value == "adafactor" and training_args.report_to == ["wandb"]
    assert training_args.label_names == ["labels"]


def test_command_macros_expand_like_the_wandb_agent():
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    every_macro = ["${env}", "${interpreter}", "${program}", "${args}", "${args_no_hyphens}",
                   "${args_no_boolean_flags}", "${args_json}", "${args_json_file}", "${args_no_equals}",
                   "--home=${envvar:HOME_FOR_TEST}"]
    assert wandb_violations(_with(command=every_macro)) == []
    # fer_hf.train reads only ${args} (spec_from_config refuses the other forms): the runner expands these.
    command = ["${env}", "${interpreter}", "${program}", "--config", "x.yaml", "${args}",
               "--home=${envvar:HOME_FOR_TEST}"]
    spec = _spec(_with(param_pretrained={"values": [True, False]}, command=command))
    params = {"learning_rate": 0.001, "pretrained": False, "weight_decay": 0.0}
    wandb_vars = create_sweep_command_args({"args": {name: {"value": value} for name, value in params.items()}})
    assert build_command(spec, params, interpreter="PY", environ={"HOME_FOR_TEST": "/home/x"}) == [
        "/usr/bin/env", "PY", "fer_hf/train.py", "--config", "x.yaml", *wandb_vars["args"], "--home=/home/x"]
    assert train_argv(_spec(TINY), params) == ["--learning_rate=0.001", "--pretrained=False", "--weight_decay=0.0"]


def test_grid_is_wandbs_grid():
    spec = _spec(_with(param_seed={"distribution": "int_uniform", "min": 1, "max": 3},
                       param_num_train_epochs={"distribution": "q_uniform", "min": 1, "max": 3, "q": 1},
                       param_weight_decay={"values": [0.0, 0.1, 0.0]}, param_optim={"value": "adafactor"}))
    combinations = grid(spec)
    # W&B: parameters sorted by name, itertools.product (last name fastest), int_uniform inclusive, q_uniform
    # numpy.arange (max excluded), repeated values once.
    assert len(combinations) == 2 * 2 * 3 * 2
    assert list(combinations[0]) == ["learning_rate", "num_train_epochs", "optim", "seed", "weight_decay"]
    assert [c["weight_decay"] for c in combinations[:2]] == [0.0, 0.1]
    assert [c["seed"] for c in combinations[:6:2]] == [1, 2, 3]
    assert sorted({c["num_train_epochs"] for c in combinations}) == [1, 2]
    assert combinations[-1]["learning_rate"] == 0.01 and all(c["optim"] == "adafactor" for c in combinations)


def test_an_integral_float_run_cap_is_a_number_of_trials():
    spec = _spec(_with(method="random", run_cap=5.0))  # W&B's schema takes 5.0 for an integer
    assert spec.run_cap == 5 and isinstance(spec.run_cap, int)
    message = wandb_violations(_with(param_x={"distribution": "log_unifrm", "min": 1, "max": 2}))[0]
    assert "log_uniform_values" in message and "log_uniform," not in message  # the deprecated form is not offered


def test_metric_names_map_to_the_trainers_files():
    assert local_metric("eval/loss") == ("results", "eval_loss")
    assert local_metric("test/accuracy") == ("results", "test_accuracy")
    assert local_metric("eval/f1_happy") == ("results", "eval_f1_happy")
    assert local_metric("train_loss") == ("results", "train_loss")
    assert local_metric("train/loss") == ("history", "loss")
    for bad in ("validation_loss", "eval/acc", "loss"):
        with pytest.raises(ValueError, match="not a key the Trainer logs"):
            local_metric(bad)


def test_agent_runs_get_their_own_output_dir():
    sweep_env = {"WANDB_SWEEP_ID": "s1", "WANDB_RUN_ID": "r1"}
    assert agent_run_output_dir("outputs/sweeps/grid", sweep_env) == str(Path("outputs/sweeps/grid/r1"))
    assert agent_run_output_dir("outputs/sweeps/grid/r1", sweep_env) == "outputs/sweeps/grid/r1"
    assert agent_run_output_dir("outputs/x", {"WANDB_RUN_ID": "r1"}) == "outputs/x"  # a resumed run, no sweep
    assert agent_run_output_dir("outputs/x", {}) == "outputs/x"


# ---- proposals for random and bayes ---------------------------------------------------------------------------

SEARCH = _with(
    method="random", run_cap=6,
    param_learning_rate={"distribution": "log_uniform_values", "min": 0.0001, "max": 0.01},
    param_weight_decay={"values": [0.0, 0.0001]},
    param_seed={"distribution": "int_uniform", "min": 0, "max": 9},
    param_max_grad_norm={"distribution": "q_uniform", "min": 0.0, "max": 0.3, "q": 0.1},
    param_label_smoothing_factor={"distribution": "normal", "mu": 0.1, "sigma": 0.02},
    param_optim={"values": ["adamw_torch", "adafactor"], "probabilities": [0.25, 0.75]},
)


@pytest.mark.parametrize("method", ["random", "bayes"])
def test_proposals_are_seeded_and_stay_in_the_space(method):
    spec = _spec({**SEARCH, "method": method})
    history = []
    proposals = []
    for index in range(12):  # past TPE's 10 random start-up trials
        params = OptunaSearch(spec, seed=7).propose(index, history)
        assert params == OptunaSearch(spec, seed=7).propose(index, history)  # same seed and history, same point
        assert 0.0001 <= params["learning_rate"] <= 0.01 and params["weight_decay"] in (0.0, 0.0001)
        assert isinstance(params["seed"], int) and 0 <= params["seed"] <= 9
        assert round(params["max_grad_norm"] * 10, 9) == round(params["max_grad_norm"] * 10)
        assert params["optim"] in ("adamw_torch", "adafactor") and isinstance(params["label_smoothing_factor"], float)
        proposals.append(params)
        history.append(Observation(params, value=params["learning_rate"]))
    assert OptunaSearch(spec, seed=8).propose(0, []) != proposals[0]
    assert len({p["learning_rate"] for p in proposals}) > 1


# ---- the runner, with a stand-in for the train entry point ----------------------------------------------------

FAKE_TRAIN = r"""
import json, pathlib, sys
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
out = pathlib.Path(sys.argv[sys.argv.index("--output_dir") + 1])
lr, wd = float(flags["learning_rate"]), float(flags["weight_decay"])
print("training", flags)
(out / "checkpoint-1").mkdir()
if lr >= 0.5:
    sys.exit("RuntimeError: loss is nan")
(out / "all_results.json").write_text(json.dumps({"eval_loss": abs(lr - 0.01) + wd, "eval_accuracy": 1 - lr}))
"""


@pytest.fixture
def fake_train(monkeypatch):
    launched: list[str] = []

    def command(spec, params, trial_dir, extra_args):
        launched.append(Path(trial_dir).name)
        return [sys.executable, "-c", FAKE_TRAIN, *wandb_args(params), *extra_args, "--output_dir", str(trial_dir)]

    monkeypatch.setattr(runner, "trial_command", command)
    return launched


def _write(tmp_path, config) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_runner_records_failures_ranks_and_resumes(tmp_path, fake_train, capsys):
    sweep_file = _write(tmp_path, _with(param_learning_rate={"values": [0.001, 0.01, 0.5]},
                                        param_weight_decay={"values": [0.0, 0.1]}))
    out = tmp_path / "out"
    ranked = sweep_main([sweep_file, "--output_dir", str(out), "--dataset", "synthetic"])
    printed = capsys.readouterr().out

    # one line per trial; a crash is recorded with its log and the sweep goes on
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [line["trial"] for line in lines] == [f"trial-{i:03d}" for i in range(6)]
    failed = [line for line in lines if line["status"] == "failed"]
    assert [line["params"]["learning_rate"] for line in failed] == [0.5, 0.5]
    assert all("loss is nan" in line["error"] and Path(line["log"]).is_file() for line in failed)
    assert all(line["value"] is not None for line in lines if line["status"] == "finished")
    # a finished trial keeps its model, not its checkpoints; a failed one keeps everything for the post-mortem
    for line in lines:
        assert (out / line["trial"] / "checkpoint-1").exists() == (line["status"] == "failed")

    # ranked best first (eval/loss minimized), failed last; the same order in the printed table
    assert [r.value for r in ranked[:4]] == sorted(r.value for r in ranked[:4])
    assert ranked[0].params == {"learning_rate": 0.01, "weight_decay": 0.0} and ranked[0].value == 0.0
    assert [r.status for r in ranked[4:]] == ["failed", "failed"]
    table_rows = [row for row in printed.splitlines() if row.startswith("| ") and "trial-" in row]
    assert [row.split("|")[2].strip() for row in table_rows] == [r.name for r in ranked]
    assert table_rows[0].split("|")[1].strip() == "1" and "failed, see" in table_rows[-1]
    assert (out / "results.md").is_file() and (out / "results.png").stat().st_size > 0

    # an interrupted sweep: trial-001 was running when it stopped, trial-005 never started
    records = SweepFolder(out).load()
    records[1].status = "running"
    del records[5]
    SweepFolder(out).save(records)
    finished_log = (out / "trial-000" / "train.log").stat().st_mtime_ns
    fake_train.clear()
    sweep_main([sweep_file, "--output_dir", str(out), "--dataset", "synthetic"])
    assert fake_train == ["trial-001", "trial-005"]  # finished trials and recorded failures are not repeated
    assert (out / "trial-000" / "train.log").stat().st_mtime_ns == finished_log
    assert [r.status for r in SweepFolder(out).load().values()].count("finished") == 4

    fake_train.clear()
    sweep_main([sweep_file, "--output_dir", str(out), "--dataset", "synthetic", "--retry_failed"])
    assert fake_train == ["trial-004", "trial-005"]

    # the same folder with other extra arguments is another sweep
    with pytest.raises(SweepConfigError, match="extra_args changed"):
        sweep_main([sweep_file, "--output_dir", str(out), "--dataset", "other"])


def test_runner_random_search_respects_caps_and_seed(tmp_path, fake_train):
    sweep_file = _write(tmp_path, _with(method="random", run_cap=5,
                                        param_learning_rate={"distribution": "log_uniform_values", "min": 0.001,
                                                             "max": 0.1}))
    first = sweep_main([sweep_file, "--output_dir", str(tmp_path / "a"), "--max_runs", "3"])
    second = sweep_main([sweep_file, "--output_dir", str(tmp_path / "b"), "--max_runs", "3"])
    assert len(first) == 3 and sorted(r.params.items() for r in first) == sorted(r.params.items() for r in second)
    more = sweep_main([sweep_file, "--output_dir", str(tmp_path / "a"), "--max_runs", "10"])  # run_cap 5 wins
    assert len(more) == 5 and fake_train.count("trial-000") == 2  # once per folder; resumed, not repeated


def test_random_search_needs_a_cap(tmp_path, fake_train):
    sweep_file = _write(tmp_path, _with(method="random"))
    with pytest.raises(SweepConfigError, match="never ends by itself"):
        sweep_main([sweep_file, "--output_dir", str(tmp_path / "out")])


def test_extra_arguments_cannot_override_what_is_searched(tmp_path, fake_train):
    with pytest.raises(SweepConfigError, match="parameters.learning_rate: searched by the sweep"):
        sweep_main([_write(tmp_path, TINY), "--output_dir", str(tmp_path / "out"), "--learning_rate=0.1"])


def test_extra_arguments_must_parse_before_any_trial(tmp_path, fake_train):
    with pytest.raises(SweepConfigError, match="unrecognized arguments: --max_stepz"):
        sweep_main([_write(tmp_path, TINY), "--output_dir", str(tmp_path / "out"), "--max_stepz", "2"])
    assert fake_train == []


# Whether a parameter is an argument of fer_hf.train, with a value it takes, is that entry point's own parser's call:
# the runner parses the trials' arguments with it before the first trial starts (the dry run too).
@pytest.mark.parametrize(
    ("config", "message"),
    [
        (_with(param_learnign_rate={"value": 0.1}), "unrecognized arguments: --learnign_rate=0.1"),
        (_with(param_per_device_train_batch_size={"values": [32, 64.5]}), "invalid int value: '64.5'"),
        (_with(param_pretrained={"value": "maybe"}), "--pretrained"),
        (_with(param_optim={"values": ["adamw", "sgd"]}), "--optim: invalid choice: 'adamw'"),
        (_with(param_in_chans={"value": 2}), "--in_chans must be 1 or 3"),  # an argument dataclass's __post_init__
        # random and bayes: every listed value parses before the first trial, not only the first proposal's
        (_with(method="random", run_cap=3, param_optim={"values": ["sgd", "adamw_torch", "adamw"]}),
         "--optim: invalid choice: 'adamw'"),
        # a distribution's numbers: the first proposal parses before the first trial, each later one before its own
        (_with(method="random", run_cap=3,
               param_lr_scheduler_type={"distribution": "uniform", "min": 0.0, "max": 1.0}),
         "--lr-scheduler-type: invalid choice: '0."),
        (_with(method="random", run_cap=3, param_seed={"distribution": "uniform", "min": 0.0, "max": 9.0}),
         "--seed: invalid int value"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_what_the_train_parser_rejects_fails_before_any_trial(tmp_path, fake_train, config, message):
    sweep_file, out = _write(tmp_path, config), tmp_path / "out"
    for dry_run in ([], ["--dry_run"]):
        with pytest.raises(SweepConfigError) as error:
            sweep_main([sweep_file, "--output_dir", str(out), *dry_run])
        assert message in str(error.value) and f"{sweep_file}:" in str(error.value)
    assert fake_train == [] and not out.exists()


def test_dry_run_prints_the_commands_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "out"
    assert sweep_main(["sweeps/grid.yaml", "--dry_run", "--output_dir", str(out), "--max_runs", "3"]) == []
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("accelerate")]
    assert len(commands) == 3 and not out.exists()
    assert commands[0].startswith("accelerate launch -m fer_hf.train --config configs/paper_resnet18.yaml "
                                  "--learning_rate=0.0001 --lr_scheduler_type=constant")
    assert f"--output_dir={out / 'trial-000'}" in commands[0]


def test_ranking_and_table():
    spec = _spec(_with(metric={"name": "eval/accuracy", "goal": "maximize"}))
    records = [
        TrialRecord(0, {"learning_rate": 0.1, "weight_decay": 0.0}, "finished", value=0.5),
        TrialRecord(1, {"learning_rate": 0.2, "weight_decay": 0.0}, "failed", log="x/train.log"),
        TrialRecord(2, {"learning_rate": 0.3, "weight_decay": 0.0}, "finished", value=0.7),
        TrialRecord(3, {"learning_rate": 0.4, "weight_decay": 0.0}, "finished", value=float("nan")),
        TrialRecord(4, {"learning_rate": 0.5, "weight_decay": 0.0}, "running"),
    ]
    assert [r.index for r in rank(spec, records)] == [2, 0, 3, 1, 4]
    rows = format_table(spec, records).splitlines()
    assert [cell.strip() for cell in rows[0].split("|")[1:-1]] == [
        "rank", "trial", "learning_rate", "weight_decay", "eval/accuracy", "status", "time (s)"]
    assert rows[2].startswith("| 1    | trial-002") and "failed, see x/train.log" in rows[5]


def test_runner_stops_creating_trials_once_a_trial_reaches_the_target(tmp_path, fake_train):
    sweep_file = _write(tmp_path, _with(metric={"name": "eval/loss", "goal": "minimize", "target": 0.001},
                                        param_learning_rate={"values": [0.01, 0.001]}))
    records = sweep_main([sweep_file, "--output_dir", str(tmp_path / "out")])
    assert [(r.name, r.value) for r in records] == [("trial-000", 0.0)]  # W&B: no new runs after the target
