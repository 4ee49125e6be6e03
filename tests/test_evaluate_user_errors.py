"""fer_hf.evaluate on the files a first-time user brings: a CSV with a bad row, a CSV of PrivateTest rows alone, a
Kaggle folder whose test/ files carry no PublicTest_/PrivateTest_ names, a model whose weights cannot be read.

The shipped model on CPU (PyTorch, no ONNX export) on a handful of random faces: seconds per test.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, skip_or_fail
from fer_hf import evaluate as fer_evaluate
from fer_hf.data.load import MIXED_TEST_SPLIT
from fer_hf.labels import LABEL_NAMES
from fer_hf.model_files import CONFIG_FILE, DEFAULT_MODEL_DIR, WEIGHTS_FILE

FAST = ["--device", "cpu", "--backend", "pytorch"]


@pytest.fixture(autouse=True)
def dataset_cache(tmp_path, monkeypatch):
    """Parsed files go to a cache of the test's own, not the user's."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")


def faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 48), dtype=np.uint8)


def write_csv(path: Path, usages: list[str], bad_lines: tuple[int, ...] = ()) -> Path:
    """A Kaggle-layout CSV, one face per Usage given; the data rows at `bad_lines` (file lines, header = 1) get a
    pixel string of 3 values."""
    rows = ["emotion,pixels,Usage"]
    for i, (face, usage) in enumerate(zip(faces(len(usages)), usages, strict=True)):
        pixels = "1 2 3" if i + 2 in bad_lines else " ".join(map(str, face.ravel()))
        rows.append(f"{i % len(LABEL_NAMES)},{pixels},{usage}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_skip_bad_rows_is_an_evaluate_option_as_its_hint_says(tmp_path, capsys):
    csv = write_csv(tmp_path / "bad.csv", ["PrivateTest"] * 10, bad_lines=(4,))
    with pytest.raises(SystemExit) as exit_info:
        fer_evaluate.main(["--dataset", str(csv), "--output_dir", str(tmp_path / "refused"), *FAST])
    assert exit_info.value.code == 1
    assert "line 4: pixels has 3 values" in capsys.readouterr().err

    out = tmp_path / "eval"
    metrics = fer_evaluate.main(["--dataset", str(csv), "--skip_bad_rows", "--output_dir", str(out), *FAST])
    assert metrics["num_samples"] == 9
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == 9
    assert sum(metrics["per_class"][name]["support"] for name in LABEL_NAMES) == 9


def test_a_csv_of_the_evaluated_split_alone_is_enough(tmp_path, capsys):
    csv = write_csv(tmp_path / "testonly.csv", ["PrivateTest"] * 8)
    out = tmp_path / "eval"
    metrics = fer_evaluate.main(["--dataset", str(csv), "--output_dir", str(out), *FAST])
    assert metrics["split"] == "test" and metrics["num_samples"] == 8
    assert "FER-2013 test, n=8" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_info:
        fer_evaluate.main(["--dataset", str(csv), "--split", "validation", "--output_dir", str(tmp_path / "v"),
                           *FAST])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "no rows with Usage 'PublicTest' (validation split)" in err and "only PrivateTest rows" in err
    assert "Training" not in err  # evaluation does not ask for what it does not use


def test_a_test_folder_without_usage_names_is_recorded_as_all_of_test(tmp_path, capsys, caplog):
    root = tmp_path / "kaggle"
    images = iter(faces(11 * len(LABEL_NAMES), seed=1))
    for name in LABEL_NAMES:  # 10 training faces a class: enough for the loader's stratified 10% hold-out
        for rel in (*(f"train/{name}/{k}.png" for k in range(10)), f"test/{name}/t.png"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(next(images)).save(root / rel)
    out = tmp_path / "eval"
    with caplog.at_level(logging.WARNING, logger="fer_hf"):
        metrics = fer_evaluate.main(["--dataset", str(root), "--output_dir", str(out), *FAST])
    assert f"the test split is {MIXED_TEST_SPLIT}, 7 images" in caplog.text
    assert json.loads((out / "metrics.json").read_text())["split_note"] == metrics["split_note"] == MIXED_TEST_SPLIT
    assert f"FER-2013 test [{MIXED_TEST_SPLIT}], n=7" in capsys.readouterr().out
    assert f"Our rows are on {MIXED_TEST_SPLIT}" in (out / "comparison.md").read_text()


def test_unreadable_weights_are_reported_as_permission_denied(tmp_path, monkeypatch, capsys):
    """Not as "truncated or corrupt (No such file or directory)", which is what safetensors says of such a file. As
    root (CI) nothing is unreadable: the check runs without the capabilities that bypass file permissions."""
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(DEFAULT_MODEL_DIR / CONFIG_FILE, model)
    shutil.copy(DEFAULT_MODEL_DIR / WEIGHTS_FILE, model)
    weights = model / WEIGHTS_FILE
    weights.chmod(0)
    expected = f"cannot read {weights}: permission denied"
    argv = ["--model", str(model), "--dataset", "synthetic", "--output_dir", str(tmp_path / "eval"), *FAST]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            skip_or_fail("running as root without setpriv (util-linux): no file is unreadable to root")
        command = [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search",
                   sys.executable, "-m", "fer_hf.evaluate", *argv]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, result.stderr
        assert expected in result.stderr and "truncated or corrupt" not in result.stderr
    else:
        with pytest.raises(SystemExit) as exit_info:
            fer_evaluate.main(argv)
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        assert expected in err and "truncated or corrupt" not in err
