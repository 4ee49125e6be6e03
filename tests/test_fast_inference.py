"""The fast inference path (issue 14): the same predictions as the reference path (timm's transform per face, the
PyTorch model) on real faces with either backend, the cached ONNX export behind the `auto` backend, reading ahead
in a background thread, and what `predict` imports."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from fer_hf import allocator
from fer_hf import predict as fer_predict
from fer_hf.inference import classifier as classifier_module
from fer_hf.inference import onnx_export
from fer_hf.inference import predictor as predictor_module
from fer_hf.inference.background import read_ahead
from fer_hf.inference.classifier import choose_backend, load_classifier, view_logits
from fer_hf.labels import LABEL_NAMES
from fer_hf.model_files import DEFAULT_MODEL_DIR, ModelFolderError
from fer_hf.modeling import image_processor_for, load_saved_model

NUM_FACES = 600


@pytest.fixture(scope="module")
def faces_and_reference(fer2013):
    """Real PrivateTest faces and the reference logits: the processor's own `val_transforms` per face and the
    shipped PyTorch model, as predict, evaluate and the demo computed them before the fast path."""
    faces = list(fer2013["test"].select(range(NUM_FACES))["image"])
    model = load_saved_model(DEFAULT_MODEL_DIR)
    transform = image_processor_for(model.config).val_transforms
    with torch.inference_mode():
        batches = [torch.stack([transform(face.convert("RGB")) for face in faces[i: i + 100]])
                   for i in range(0, len(faces), 100)]
        reference = torch.cat([model(pixel_values=batch).logits for batch in batches]).numpy()
    return faces, reference


@pytest.mark.parametrize("backend", ["pytorch", "onnxruntime"])
def test_fast_path_predicts_what_the_reference_path_did(faces_and_reference, backend):
    faces, reference = faces_and_reference
    classifier = load_classifier(backend=backend, device="cpu")
    assert classifier.backend.startswith(backend)
    logits = classifier.predict(faces, batch_size=64)
    assert np.array_equal(logits.argmax(-1), reference.argmax(-1))
    # PyTorch sees bit-identical inputs (only batch composition differs); ONNX Runtime's kernels differ in rounding.
    assert np.abs(logits - reference).max() < (1e-4 if backend == "pytorch" else 1e-3)


def test_predict_on_a_folder_of_crops_gives_the_reference_labels(faces_and_reference, tmp_path, capsys, monkeypatch):
    faces, reference = faces_and_reference
    folder = tmp_path / "crops"
    folder.mkdir()
    for i, face in enumerate(faces[:200]):
        face.save(folder / f"{i:04d}.png")
    outputs = {}
    for backend in ("auto", "pytorch"):
        args = [str(folder), "--no_detect", "--json", "--backend", backend, "--batch_size", "16"]
        assert fer_predict.main(args) == 0
        outputs[backend] = json.loads(capsys.readouterr().out)
    for records in outputs.values():
        assert [r["file"] for r in records] == [str(folder / f"{i:04d}.png") for i in range(200)]  # input order
        labels = [r["faces"][0]["label"] for r in records]
        assert labels == [LABEL_NAMES[i] for i in reference[:200].argmax(-1)]
    worst = max(abs(a["faces"][0]["scores"][k] - b["faces"][0]["scores"][k])
                for a, b in zip(outputs["auto"], outputs["pytorch"], strict=True) for k in LABEL_NAMES)
    assert worst <= 1.01e-4  # scores are rounded to 4 decimals: the backends differ by at most the last digit
    # The crops (8-bit gray PNGs) went through OpenCV's reader; through read_image, every record is the same.
    monkeypatch.setattr(predictor_module, "read_plain_gray", lambda *args: None)
    assert fer_predict.main(args) == 0
    assert json.loads(capsys.readouterr().out) == outputs["pytorch"]


def test_auto_exports_once_then_reuses_the_cached_file(monkeypatch):
    first = load_classifier()  # exports into this session's cache (tests/conftest.py), unless an earlier test did
    assert first.backend.startswith("onnxruntime")
    cached = onnx_export.cache_target(DEFAULT_MODEL_DIR)
    assert cached.is_file() and cached.name.startswith("default_model-")
    stamp = cached.stat().st_mtime_ns
    monkeypatch.setattr(onnx_export, "export_onnx", lambda *a, **k: pytest.fail("exported again"))
    second = load_classifier()
    assert cached.stat().st_mtime_ns == stamp and second.data_config == first.data_config
    assert second.label_names == first.label_names
    # the file runs alone: config and data config are in its metadata
    alone = load_classifier(onnx_path=cached)
    assert alone.data_config == first.data_config and alone.config["architecture"] == first.config["architecture"]


def test_a_changed_model_gets_a_new_cache_key(tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, copy)
    key = onnx_export.cache_key(copy)
    assert key == onnx_export.cache_key(DEFAULT_MODEL_DIR)  # by content, not by path
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert onnx_export.cache_key(copy) != key


def test_an_unwritable_cache_falls_back_to_the_temporary_folder(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("FER_HF_CACHE", str(blocker))
    monkeypatch.setattr(onnx_export.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    target = onnx_export.cache_target(DEFAULT_MODEL_DIR)
    assert target.parent.is_dir() and target.is_relative_to(tmp_path / "tmp") and not target.exists()
    assert "cannot write the ONNX cache" in caplog.text
    monkeypatch.setattr(onnx_export.tempfile, "gettempdir", lambda: str(blocker))
    with pytest.raises(OSError, match="no writable folder for the ONNX export"):
        onnx_export.cache_target(DEFAULT_MODEL_DIR)  # then `auto` uses PyTorch (next test)


def test_auto_falls_back_to_pytorch_when_the_export_fails(monkeypatch, caplog):
    def broken(model_dir, opset=18):
        raise RuntimeError("an operator ONNX has no equivalent for")

    monkeypatch.setattr(classifier_module, "cached_onnx", broken)
    assert load_classifier(device="cpu").backend.startswith("pytorch")
    assert "could not run it on ONNX Runtime (RuntimeError: an operator" in caplog.text
    with pytest.raises(RuntimeError, match="an operator"):
        load_classifier(backend="onnxruntime")
    with pytest.raises(ModelFolderError):  # not a model: said before any export is tried
        load_classifier(DEFAULT_MODEL_DIR.parent / "inference")


def test_backend_choice(monkeypatch):
    monkeypatch.setattr(classifier_module, "gpu_visible", lambda: False)
    assert choose_backend("auto", None) == "onnxruntime" and choose_backend("auto", "cpu") == "onnxruntime"
    assert choose_backend("auto", "cuda") == "pytorch" and choose_backend("pytorch", None) == "pytorch"
    monkeypatch.setattr(classifier_module, "gpu_visible", lambda: True)
    assert choose_backend("auto", None) == "pytorch" and choose_backend("auto", "cpu") == "onnxruntime"
    with pytest.raises(ValueError, match="runs on the CPU"):
        choose_backend("onnxruntime", "cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        load_classifier(backend="tensorrt")
    with pytest.raises(ValueError, match="--backend must be one of"):
        fer_predict.PredictArguments(backend="tensorrt")
    with pytest.raises(ValueError, match="--threads must be at least 1"):
        fer_predict.PredictArguments(threads=0)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        load_classifier(threads=-2)


def test_a_missing_exporter_is_said_and_pytorch_runs(tmp_path, monkeypatch, caplog):
    """onnxruntime without onnxscript (or with torch < 2.6): nothing is exported, PyTorch runs, the warning says
    what to install."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setenv("FER_HF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript"
                        else real_find_spec(name, *a))
    assert load_classifier(device="cpu").backend.startswith("pytorch")
    assert "needs onnx, onnxscript and torch >= 2.6 (missing or too old: onnxscript)" in caplog.text
    assert not list((tmp_path / "cache").rglob("*.onnx"))


def test_a_damaged_cached_file_is_dropped_and_exported_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FER_HF_CACHE", str(tmp_path / "cache"))
    target = onnx_export.cache_target(DEFAULT_MODEL_DIR)
    target.write_bytes(b"half an onnx file")
    assert load_classifier(device="cpu").backend.startswith("pytorch")  # this run: PyTorch, said
    assert "could not run it on ONNX Runtime" in caplog.text and not target.exists()


def test_views_are_batched_whole_whatever_the_batch_size(faces_and_reference):
    faces, _ = faces_and_reference
    classifier = load_classifier(backend="onnxruntime")
    whole = view_logits(classifier, faces[:7], "tencrop", batch_size=1000)
    split = view_logits(classifier, faces[:7], "tencrop", batch_size=25)  # 2 faces (20 views) per batch
    assert whole.shape == split.shape == (7, 10, 7) and np.allclose(whole, split, atol=1e-5)


# ----------------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("workers", [1, 3])  # 3: later items often finish first; they still come out in order
def test_read_ahead_keeps_order_and_bounds_what_is_in_flight(workers):
    started: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        time.sleep(0.001 * (i % 3))
        return i * i

    seen = []
    for i, value in enumerate(read_ahead(work, range(50), depth=4, workers=workers)):
        with lock:
            assert len(started) <= i + 5  # at most `depth` items beyond the one consumed (+1 submitted)
        seen.append(value)
    assert seen == [i * i for i in range(50)]


def test_read_ahead_gives_what_was_submitted_before_the_items_failed():
    def items():
        yield from range(5)
        raise OSError("the folder went away")

    seen = []
    with pytest.raises(OSError, match="went away"):
        for value in read_ahead(lambda i: i * 10, items(), depth=3, workers=2):
            seen.append(value)
    assert seen == [0, 10, 20, 30, 40]


def test_read_ahead_raises_the_workers_error_and_stops_early():
    def work(i: int) -> int:
        if i == 3:
            raise MemoryError("photo 3")
        return i

    with pytest.raises(MemoryError, match="photo 3"):
        list(read_ahead(work, range(10), depth=2))
    calls = []
    stream = read_ahead(lambda i: calls.append(i) or i, range(1000), depth=3)
    assert next(stream) == 0
    stream.close()  # the consumer stops: nothing more is read
    assert len(calls) <= 5


def test_predict_help_and_a_cached_onnx_run_never_import_torch(tmp_path):
    """Start-up: `--help` imports neither torch nor datasets; a photo on the cached ONNX export needs no torch."""
    from PIL import Image
    from skimage import data as skimage_data

    load_classifier()  # make sure the session's cache holds the shipped model's export
    photo = tmp_path / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(photo)
    probe = ("import runpy, sys; sys.argv = ['fer_hf.predict', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('fer_hf.predict', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "heavy = sorted(m for m in ('torch', 'timm', 'datasets', 'transformers.modeling_utils')\n"
             "               if m in sys.modules)\n"
             "print('HEAVY', heavy, file=sys.stderr)")
    for args in (["--help"], [str(photo), "--json"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert "HEAVY []" in done.stderr, (args, done.stderr[-2000:])
    assert json.loads(done.stdout)[0]["faces"][0]["label"]


def _stub_predictor(tmp_path, count: int):
    """A FacePredictor over a stub model (streams 2) that reads each crop's label from its pixels, the `whole`
    flag of every model call, and `count` crop files (file i's label: i % 7)."""
    from fer_hf.inference.classifier import FerClassifier
    from fer_hf.inference.predictor import FacePredictor

    calls = []
    lock = threading.Lock()

    def run(whole: bool):
        def logits(pixels: np.ndarray) -> np.ndarray:
            with lock:
                calls.append((whole, len(pixels)))
            time.sleep(0.002 * (len(calls) % 3))  # batches finish out of order
            return pixels[:, 0, 0, :7].copy()  # the first row's first 7 pixels: the file's label is the bright one
        return logits

    config = {"label_names": list(LABEL_NAMES)}
    data_config = {"input_size": (3, 48, 48), "interpolation": "bilinear", "mean": (0.0,) * 3, "std": (1.0,) * 3,
                   "crop_pct": 1.0}
    classifier = FerClassifier(config, data_config, run(False), "fake", streams=2, run_whole=run(True))
    files = []
    for i in range(count):
        pixels = np.zeros((48, 48), np.uint8)
        pixels[0, i % 7] = 255
        files.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(pixels).save(files[-1])
    return FacePredictor(classifier, detect=False), calls, files


def test_predict_runs_whole_batches_at_once_only_where_there_are_several(tmp_path):
    """Several batches of crops: `streams` whole batches run at once (`whole=True`); a single batch, or photos kept
    for annotation, go one batch at a time, split across the threads; the records stay in input order."""
    from fer_hf.inference.annotate import AnnotationTarget
    from fer_hf.inference.predictor import predict_images

    predictor, calls, files = _stub_predictor(tmp_path, 40)
    annotated = AnnotationTarget(str(tmp_path / "out"), single_input=False)
    for chosen, batch_size, annotate, whole in ((files, 8, None, True), (files[:8], 8, None, False),
                                                (files[:12], 8, annotated, False)):
        calls.clear()
        records = list(predict_images(predictor, chosen, batch_size=batch_size, annotate=annotate))
        assert [r["file"] for r in records] == [str(f) for f in chosen]
        assert [r["faces"][0]["label"] for r in records] == [LABEL_NAMES[i % 7] for i in range(len(chosen))]
        assert {w for w, _ in calls} == {whole}


def test_photos_kept_for_annotation_are_read_one_ahead(tmp_path, monkeypatch):
    """Decoded photos kept for --annotate are large (up to 4096 px a side): when the first record comes out, the
    reader has read its batch, the next batch (which the model thread takes while the first one runs) and at most
    one photo more, whatever the thread timing."""
    from fer_hf.inference.annotate import AnnotationTarget
    from fer_hf.inference.predictor import predict_images

    predictor, _, files = _stub_predictor(tmp_path, 24)
    read, count = predictor_module.read_image, []

    def counting(path, *args):
        count.append(path)
        return read(path, *args)

    monkeypatch.setattr(predictor_module, "read_image", counting)
    records = predict_images(predictor, files, batch_size=8, annotate=AnnotationTarget(str(tmp_path / "out"), False))
    next(records)
    time.sleep(0.3)  # time for a reader that would run further ahead to do so
    assert len(count) <= 2 * 4 + 2  # two batches of min(batch_size, 4) photos, plus the one read ahead (and its next)
    assert len(list(records)) == 23


def _reader_failing_at(index: int, tmp_path, monkeypatch):
    """The stub predictor over 40 crop files, and those files; the crop reader raises at file `index`."""
    predictor, _, files = _stub_predictor(tmp_path, 40)
    read = predictor_module.read_plain_gray

    def failing(path, *args):
        if path == files[index]:
            raise RuntimeError("the reader broke")
        return read(path, *args)

    monkeypatch.setattr(predictor_module, "read_plain_gray", failing)
    return predictor, files


def test_a_failing_reader_still_gives_the_records_of_the_files_before(tmp_path, monkeypatch):
    """Not a bad file (those are records) but the reader itself failing at file 21 of 40: the 21 files before it
    come out, in order, then the error."""
    from fer_hf.inference.predictor import predict_images

    predictor, files = _reader_failing_at(21, tmp_path, monkeypatch)
    records = []
    with pytest.raises(RuntimeError, match="reader broke"):
        for record in predict_images(predictor, files, batch_size=8):
            records.append(record)
    assert [r["file"] for r in records] == [str(f) for f in files[:21]]


def test_json_of_a_run_that_breaks_off_is_closed_with_the_records_before(tmp_path, monkeypatch, capsys):
    """predict --json when the run itself fails at file 21 of 40: stdout is still one JSON list, of the 21 records
    before, and the error goes on (traceback, non-zero exit)."""
    predictor, files = _reader_failing_at(21, tmp_path, monkeypatch)
    monkeypatch.setattr(fer_predict, "load_classifier", lambda *args, **kwargs: predictor.classifier)
    with pytest.raises(RuntimeError, match="reader broke"):
        fer_predict.main([str(tmp_path), "--no_detect", "--json", "--batch_size", "8"])
    records = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in records] == [str(f) for f in files[:21]]
    assert [r["faces"][0]["label"] for r in records] == [LABEL_NAMES[i % 7] for i in range(21)]


def test_batch_rounding_of_scores_equals_pythons_round_to_the_bit():
    """The records' scores are rounded a batch at once; for float32 probabilities that must be `round(float(p), 4)`
    exactly, including values a float32 step either side of a rounding boundary (k + 0.5) / 10**4."""
    from fer_hf.inference.predictor import round_scores

    rng = np.random.default_rng(0)
    boundaries = (np.arange(10_000, dtype=np.float64) + 0.5) / 10_000
    near = np.concatenate([np.nextafter(boundaries.astype(np.float32), np.float32(side)) for side in (0, 1)]
                          + [boundaries.astype(np.float32)])
    values = np.concatenate([rng.random(50_000, dtype=np.float32), near, np.float32([0, 1, 0.5, 1e-9, 0.99995])])
    probabilities = values.reshape(-1, 7) if len(values) % 7 == 0 else values[: len(values) // 7 * 7].reshape(-1, 7)
    assert round_scores(probabilities) == [[round(float(p), 4) for p in row] for row in probabilities]
    wide = probabilities.astype(np.float64) / 3  # not float32: every value rounded by Python, as before
    assert round_scores(wide) == [[round(float(p), 4) for p in row] for row in wide]


@pytest.mark.parametrize("ending, collected", [("sys.exit(3)", True), ("cli.exit_now(3)", False)])
def test_exit_now_skips_the_collection_at_shutdown_and_keeps_status_and_output(ending, collected):
    """predict's and evaluate's ending: the interpreter's last garbage collection (most of a second with torch
    imported) is skipped -- an object in a reference cycle is not finalised -- while the exit status and everything
    printed come out as with sys.exit."""
    probe = ("import sys\nfrom fer_hf import cli\n"
             "class Cycle:\n    def __del__(self):\n        print('finalised', file=sys.stderr, flush=True)\n"
             "cycle = Cycle(); cycle.me = cycle; del cycle\n"
             f"print('records', end='')\n{ending}\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (3, "records")
    assert ("finalised" in done.stderr) is collected, done.stderr


def _probe(code: str, *args: str) -> str:
    """The standard output of `code` run in a fresh Python process (one torch thread), which must succeed: for what
    is process-wide (imports, the allocator)."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# ---- PyTorch without transformers (fer_hf.timm_module) ----------------------------------------------------------


@pytest.mark.parametrize("in_chans", [3, 1])
def test_the_timm_module_gives_the_transformers_models_logits_to_the_bit(tmp_path, in_chans):
    """The PyTorch backend's module (timm alone) against `load_saved_model` (transformers): the same logits, the
    same data config; on the shipped model (fp16 weights widened) and on a grayscale-input model saved in fp16."""
    from fer_hf.modeling import build_model
    from fer_hf.timm_module import data_config_of, load_timm_module

    if in_chans == 3:
        folder = DEFAULT_MODEL_DIR
    else:
        folder = tmp_path / "gray"
        build_model("resnet18", pretrained=False, in_chans=1, image_size=48).to(torch.float16).save_pretrained(folder)
    reference = load_saved_model(folder)
    module, config = load_timm_module(folder)
    assert next(module.parameters()).dtype == torch.float32 and not module.training
    data_config = image_processor_for(reference.config).data_config
    assert data_config_of(config) == data_config
    pixels = torch.randn(5, *data_config["input_size"], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(module(pixels), reference(pixel_values=pixels).logits)


def test_weights_that_do_not_fit_the_config_are_named_by_the_timm_module(tmp_path):
    from fer_hf.modeling import build_model
    from fer_hf.timm_module import load_timm_module

    build_model("resnet18", pretrained=False, image_size=48).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architecture": "resnet34"}))
    with pytest.raises(ModelFolderError, match=r"the weights do not fit its config\.json"):
        load_timm_module(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "architecture": "no_such_net"}))
    with pytest.raises(ModelFolderError, match=r"cannot build its model .*upgrade timm"):
        load_timm_module(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({key: value for key, value in config.items()
                                                      if key != "pretrained_cfg"}))
    with pytest.raises(ModelFolderError, match=r"has no pretrained_cfg"):
        load_timm_module(tmp_path)


def test_the_pytorch_backend_never_imports_transformers():
    """A second of start-up: `predict --backend pytorch` and `evaluate --backend pytorch` load torch and timm only,
    not transformers nor the wandb that `import timm` would pull in (installed here, for sweeps); wandb still
    imports afterwards."""
    probe = ("import sys\nfrom fer_hf.inference.classifier import load_classifier\n"
             "classifier = load_classifier(backend='pytorch', device='cpu')\n"
             "import numpy as np\n"
             "print(classifier.backend, classifier.logits(np.zeros((2, 3, 96, 96), np.float32)).shape)\n"
             "print('LOADED', sorted(m for m in ('torch', 'timm', 'transformers', 'wandb') if m in sys.modules))\n"
             "import wandb\nprint('THEN', wandb.__name__)")
    out = _probe(probe)
    assert "pytorch (cpu) (2, 7)" in out and "LOADED ['timm', 'torch']" in out, out
    assert "THEN wandb" in out


def test_a_wandb_imported_before_the_pytorch_backend_stays_as_it_is():
    """Where wandb is already imported (a sweep's process), loading the PyTorch backend leaves it alone."""
    probe = ("import sys, wandb\nfrom fer_hf.inference.classifier import load_classifier\n"
             "before = sys.modules['wandb']\nload_classifier(backend='pytorch', device='cpu')\n"
             "print('SAME', sys.modules['wandb'] is before and 'timm' in sys.modules)")
    out = _probe(probe)
    assert "SAME True" in out, out


# ---- running the model at the speed it runs alone ---------------------------------------------------------------


def test_onnx_runtime_runs_a_large_batch_in_cache_sized_pieces(faces_and_reference, monkeypatch):
    """On a CPU, a batch of more than RUN_PIXELS of input goes to ONNX Runtime in runs of at most that (8 faces of the
    shipped 96 px model: their activations stay in the cache): run whole in order, or split across the two threads
    first; the logits are those of face-by-face runs."""
    import onnxruntime

    faces, _ = faces_and_reference
    classifier = load_classifier(backend="onnxruntime", threads=2)
    assert tuple(classifier.data_config["input_size"][1:]) == (96, 96)
    assert classifier_module.RUN_PIXELS // (96 * 96) == 8
    pixels = classifier.preprocess(faces[:45])[:, 0]
    one_by_one = np.concatenate([classifier.logits(pixels[i: i + 1]) for i in range(len(pixels))])
    sizes = []
    run = onnxruntime.InferenceSession.run

    def recording(self, outputs, feed, *args, **kwargs):
        sizes.append(len(next(iter(feed.values()))))
        return run(self, outputs, feed, *args, **kwargs)

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", recording)
    for whole, expected in ((True, [8, 8, 8, 8, 8, 5]), (False, [6, 7, 8, 8, 8, 8])):  # split: 23 + 22 faces
        sizes.clear()
        logits = classifier.logits(pixels, whole=whole)
        assert (sizes if whole else sorted(sizes)) == expected
        np.testing.assert_allclose(logits, one_by_one, atol=1e-5)


def test_predict_runs_a_pytorch_model_on_a_cpu_on_the_calling_thread(tmp_path):
    """PyTorch on a CPU runs a third slower from a thread other than the one that waits for it (GNU OpenMP): predict
    runs such a model (one batch at a time) on the calling thread; a PyTorch model on a GPU, ONNX Runtime, and
    several batches at once run on threads of their own. The records are the same and in order either way."""
    from fer_hf.inference.predictor import predict_images

    predictor, _, files = _stub_predictor(tmp_path, 40)
    classifier = predictor.classifier
    run, run_whole = classifier._run, classifier._run_whole
    main, own = {threading.main_thread().name}, {"fer_hf-model"}
    for model, device, streams, expected in ((object(), "cpu", 1, main), (object(), "cuda", 1, own),
                                             (None, "cpu", 1, own), (object(), "cpu", 2, own)):
        threads = set()
        classifier.model, classifier.device, classifier.streams = model, device, streams

        def spying(pixels, threads=threads):
            threads.add(threading.current_thread().name.rsplit("_", 1)[0])
            return run(pixels)

        classifier._run = classifier._run_whole = spying
        try:
            records = list(predict_images(predictor, files, batch_size=8))
        finally:
            classifier._run, classifier._run_whole = run, run_whole
        assert threads == expected, (model, device, streams)
        assert [r["faces"][0]["label"] for r in records] == [LABEL_NAMES[i % 7] for i in range(len(files))]


KEEP_PROBE = """
import resource, sys, numpy as np, torch
from fer_hf.inference.classifier import load_classifier
from fer_hf.allocator import keep_freed_memory
torch.set_num_threads(1)
classifier = load_classifier(backend="pytorch", device="cpu") if sys.argv[1] == "load" else None
if classifier is None:
    from fer_hf.timm_module import load_timm_module
    from fer_hf.model_files import DEFAULT_MODEL_DIR
    model = load_timm_module(DEFAULT_MODEL_DIR, dtype=torch.float32)[0]
    run = lambda x: model(torch.from_numpy(x)).numpy()
else:
    run = classifier.logits
size = 96
batch = np.random.default_rng(0).standard_normal((32, 3, size, size), dtype=np.float32)
with torch.inference_mode():
    run(batch)
    faults = []
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        run(batch)
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 32)
print(np.median(faults))  # a batch now and then still grows the heap
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator setting (mallopt) is Linux's")
def test_the_pytorch_backend_keeps_freed_memory_instead_of_faulting_it_in_again():
    """glibc hands each batch's freed activations back to the system, so PyTorch page-faults them in again at the
    next batch (over a thousand faults a face with the shipped model); the PyTorch backend on a CPU has the process
    keep them: next to no faults in most batches after the first. Fresh processes: the setting is process-wide."""
    faults = {}
    for how in ("plain", "load"):
        faults[how] = float(_probe(KEEP_PROBE, how).split()[-1])
    assert faults["plain"] > 200 and faults["load"] < 50, faults


class _FakeLibc:
    """A C library whose mallopt refuses mmap thresholds above `most` (older glibc: 32 MiB), recording its calls."""

    def __init__(self, most: int | None):
        self.calls, self.most = [], most

    @property
    def mallopt(self):
        def mallopt(parameter, value):
            self.calls.append((parameter, value))
            return int(self.most is not None and (parameter != allocator.M_MMAP_THRESHOLD or value <= self.most))
        return mallopt


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator setting (mallopt) is Linux's")
def test_keep_freed_memory_falls_back_on_older_glibc_and_stands_aside_when_told(monkeypatch):
    """Older glibc refuses a 1 GiB mmap threshold: 32 MiB is set instead, then the trim threshold and the arenas. A C
    library that takes none (musl) gets nothing else set. FER_HF_KEEP_FREED_MEMORY=0, or the user's own malloc
    settings in the environment, leave the allocator alone (mallopt is not called)."""
    for most, expected in ((1 << 25, True), (None, False), (1 << 40, True)):
        libc = _FakeLibc(most)
        monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name, libc=libc: libc)
        for name in (allocator.OPT_OUT, *allocator.USER_MALLOC_SETTINGS, "GLIBC_TUNABLES"):
            monkeypatch.delenv(name, raising=False)
        assert allocator.keep_freed_memory() is expected
        thresholds = [allocator.KEEP_FREED_BYTES] + ([allocator.OLD_GLIBC_MMAP_MAX] if most != 1 << 40 else [])
        rest = [(allocator.M_TRIM_THRESHOLD, allocator.KEEP_FREED_BYTES), (allocator.M_ARENA_MAX, 1)] * expected
        assert libc.calls == [(allocator.M_MMAP_THRESHOLD, value) for value in thresholds] + rest
    for name, value in ((allocator.OPT_OUT, "0"), ("MALLOC_ARENA_MAX", "2"),
                        ("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0")):
        libc = _FakeLibc(1 << 40)
        monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name, libc=libc: libc)
        monkeypatch.setenv(name, value)
        assert allocator.keep_freed_memory() is False and libc.calls == []
        monkeypatch.delenv(name)
