"""notebooks/: each runs top to bottom in a Jupyter kernel with the small setting, draws its figures, and is
committed without outputs."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, require_fer2013, require_module

NOTEBOOK_DIR = REPO / "notebooks"
# name -> (needs the real archive, figures it must draw, text its outputs must contain)
NOTEBOOKS = {
    "01_fer2013_tour": (True, 5, ["have a Training twin", "FER+ majority = original label"]),
    "02_finetune": (True, 5, ["test_accuracy", "model.safetensors"]),
    "03_paper_results": (False, 4, ["quoted", "PrivateTest"]),
    "04_predict_photos": (False, 5, ["happy", "without it: []"]),
}


def test_the_notebooks_are_the_ones_listed():
    assert sorted(path.stem for path in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name):
    notebook = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())
    for number, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{name} cell {number} carries outputs: strip them before committing"
            assert cell["execution_count"] is None, f"{name} cell {number} carries an execution count"


def _text(output: dict) -> str:
    if "text" in output:
        return output["text"]
    data = output.get("data", {})
    return data.get("text/markdown", "") + data.get("text/plain", "") + data.get("text/html", "")


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_runs_top_to_bottom(name, tmp_path, monkeypatch):
    nbclient = require_module("nbclient", 'pip install -e ".[dev]"')
    nbformat = require_module("nbformat", 'pip install -e ".[dev]"')
    require_module("ipykernel", 'pip install -e ".[dev]"')
    needs_data, figures, texts = NOTEBOOKS[name]
    if needs_data:
        monkeypatch.setenv("FER2013_PATH", str(require_fer2013()))
    monkeypatch.setenv("FER_HF_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("FER_HF_NOTEBOOK_OUTPUT", str(tmp_path))
    notebook = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    # The kernel starts in notebooks/, as Jupyter starts it; a failing cell raises CellExecutionError.
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    drawn = sum("image/png" in output.get("data", {}) for output in outputs)
    assert drawn >= figures, f"{name}: {drawn} figures shown, expected {figures} (is a backend swallowing them?)"
    shown = "\n".join(_text(output) for output in outputs)
    for text in texts:
        assert text in shown, f"{name}: {text!r} not in its outputs"
