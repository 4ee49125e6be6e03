"""fer_hf.export: ONNX with a dynamic batch axis, parity with PyTorch on real FER-2013 faces, and `predict --onnx`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require_module

require_module("onnxruntime", "the onnx extra: pip install -e .[onnx]")
require_module("onnxscript", "the onnx extra: pip install -e .[onnx]")

from fer_hf import export  # noqa: E402
from fer_hf import predict as fer_predict  # noqa: E402
from fer_hf.hashing import weights_sha256  # noqa: E402
from fer_hf.inference.classifier import ONNX_CONFIG_KEY, load_classifier, view_logits  # noqa: E402
from fer_hf.inference.onnx_export import ONNX_DATA_CONFIG_KEY, ONNX_WEIGHTS_KEY  # noqa: E402
from fer_hf.model_files import DEFAULT_MODEL_DIR  # noqa: E402


@pytest.fixture
def shared_dataset_cache(tmp_path_factory, monkeypatch):
    import datasets

    cache = tmp_path_factory.getbasetemp() / "fer_hf_cli_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def test_export_onnx_parity_on_real_faces_and_predict_with_it(trained_run, fer2013, fer2013_path,
                                                               shared_dataset_cache, tmp_path, capsys):
    import onnx

    path = tmp_path / "fer.onnx"
    difference = export.main([str(trained_run), "--onnx", str(path), "--dataset", str(fer2013_path),
                              "--num_images", "32"])
    assert difference < 1e-4
    assert "max abs logit difference" in capsys.readouterr().out

    model = onnx.load(str(path))
    batch_axis = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_axis.dim_param and not batch_axis.dim_value  # symbolic: any batch size
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    assert ONNX_CONFIG_KEY in metadata and metadata[ONNX_WEIGHTS_KEY] == weights_sha256(trained_run)
    # An export from before the data config was embedded: resolved from the embedded config, to the same values.
    kept = [entry for entry in model.metadata_props if entry.key != ONNX_DATA_CONFIG_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(tmp_path / "older.onnx"))
    assert json.dumps(load_classifier(onnx_path=tmp_path / "older.onnx").data_config, sort_keys=True) == \
        json.dumps(json.loads(metadata[ONNX_DATA_CONFIG_KEY]), sort_keys=True)

    # Independently of the CLI's own check: other real faces, batch sizes 7 and 1.
    faces = [fer2013["validation"][i]["image"] for i in range(7)]
    reference = view_logits(load_classifier(trained_run, device="cpu"), faces)[:, 0]
    onnx_model = load_classifier(onnx_path=path)  # labels and preprocessing from the embedded config
    assert onnx_model.label_names == load_classifier(trained_run, device="cpu").label_names
    assert np.abs(view_logits(onnx_model, faces, batch_size=7)[:, 0] - reference).max() < 1e-4
    assert np.abs(view_logits(onnx_model, faces, batch_size=1)[:, 0] - reference).max() < 1e-4

    for i, face in enumerate(faces[:2]):
        face.save(tmp_path / f"face{i}.png")
    outputs = {}
    for backend in (["--onnx", str(path)], ["--model", str(trained_run)]):
        assert fer_predict.main([str(tmp_path / "face0.png"), str(tmp_path / "face1.png"), "--no_detect", "--json",
                                 *backend]) == 0
        outputs[backend[0]] = json.loads(capsys.readouterr().out)
    for by_onnx, by_torch in zip(outputs["--onnx"], outputs["--model"], strict=True):
        assert by_onnx["faces"][0]["label"] == by_torch["faces"][0]["label"]
        for label, score in by_onnx["faces"][0]["scores"].items():
            assert score == pytest.approx(by_torch["faces"][0]["scores"][label], abs=2e-4)

    # The folder it came from may name it; another model's folder may not (its reports would name the wrong model).
    assert fer_predict.main([str(tmp_path / "face0.png"), "--no_detect", "--onnx", str(path), "--model",
                             str(trained_run)]) == 0
    capsys.readouterr()
    assert fer_predict.main([str(tmp_path / "face0.png"), "--no_detect", "--onnx", str(path), "--model",
                             str(DEFAULT_MODEL_DIR)]) == 2
    assert f"{path} was not exported from {DEFAULT_MODEL_DIR} (its weights differ)" in capsys.readouterr().err


def test_export_to_a_folder_is_refused_before_exporting(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        export.main([str(DEFAULT_MODEL_DIR), "--onnx", str(tmp_path)])
    assert stopped.value.code == 2
    assert f"--onnx {tmp_path}: is a folder; name the file to write" in capsys.readouterr().err


def test_an_export_that_fails_its_checks_leaves_no_file(tmp_path, capsys):
    """A parity check that fails, or an opset torch's exporter could not write (it keeps its own and only logs why),
    leave nothing at --onnx, nor a temporary file beside it; bad --split / --num_images stop before any export."""
    target = tmp_path / "model.onnx"
    with pytest.raises(SystemExit) as stopped:
        export.main([str(DEFAULT_MODEL_DIR), "--onnx", str(target), "--tolerance", "1e-12", "--num_images", "4"])
    assert "not written" in str(stopped.value.code)
    with pytest.raises(SystemExit) as stopped:
        export.main([str(DEFAULT_MODEL_DIR), "--onnx", str(target), "--opset", "17", "--num_images", "4"])
    assert stopped.value.code == 1 and "could not write opset 17" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    for flags, message in ((["--split", "foo"], "--split must be one of"), (["--num_images", "0"], "at least 1")):
        with pytest.raises(SystemExit) as stopped:
            export.main([str(DEFAULT_MODEL_DIR), "--onnx", str(target), *flags])
        assert stopped.value.code == 2 and message in capsys.readouterr().err
