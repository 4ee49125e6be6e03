"""CPU inference speed of a saved model (default: the shipped one): ONNX Runtime and PyTorch side by side in one run,
against the targets of the inference issue.

    python benchmarks/inference.py [--model DIR] [--threads N] [--json OUT]

Per backend (ONNX Runtime through the `auto` backend's cached export, and PyTorch), at `--batch_size`:
- `model_faces_per_s`: the network alone on ready (preprocessed) batches of the first `--model_faces` real
  PrivateTest faces, best of 3, the faster of one batch at a time and `streams` whole batches at once (as predict
  runs it: ONNX Runtime, one thread per batch), both recorded;
- `predict_folder_faces_per_s`: `python -m fer_hf.predict FOLDER --no_detect --json` on the whole PrivateTest split
  saved as 3,589 PNG crops, as a user runs it (a new process: start-up, reading, preprocessing, the model, JSON),
  median of 3;
  `predict_folder_ratio` is it over `model_faces_per_s` (target >= 0.8); `predict_folder_phases`: one such run
  timed inside (`benchmarks/predict_phases.py`: imports, listing, loading, the first model run, the rest), and
  `predict_folder_without_model` the same with a model that returns at once (the pipeline's own cost);
- `batch_predict_faces_per_s`: `FerClassifier.predict` on the decoded split's PIL faces, in process (batch
  inference: preprocessing overlapped with the model);
- `evaluate_faces_per_s`: `fer_hf.inference.classifier.evaluate_model` on the same faces (what
  `python -m fer_hf.evaluate` runs after loading the data: the same path, plus the metrics; their imports before);
- `single_face_ms` and `photo_ms`: one face, and one 512x512 photograph (scikit-image's astronaut) through detection,
  cropping and the classifier (`FacePredictor.faces`, what the web demo runs per photo), medians; the photo again
  with the detector's coarser pyramid (`--scale_factor 1.2`), and the boxes found both ways;
- `one_photo_run_s` and `help_s`: `python -m fer_hf.predict astronaut.png` and `python -m fer_hf.predict --help` as
  new processes (start-up: imports, model, session), medians of 3;
- with `--bounds N`: what the folder run would take with parts of its work taken away (`predict_phases.py`'s
  stubs: no file reading and decoding; that and no resizing; that and no model), each a new process, the variants
  alternated N times, medians, and the share each would give: how far the folder's share can rise at most when
  only the rest is made faster.
Threads: `--threads` for ONNX Runtime, torch and OpenCV alike (default: every usable core). New processes run with
Python's bytecode cache on, as an installed package has it (a run first fills it), whatever PYTHONDONTWRITEBYTECODE
says here.
"""


from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_ARCHIVE = Path(os.environ.get("FER2013_PATH", REPO.parent / "shared" / "data" / "fer2013"))

from fer_hf.data.load import load_fer2013  # noqa: E402
from fer_hf.inference.background import read_ahead  # noqa: E402
from fer_hf.inference.classifier import FerClassifier, default_threads, evaluate_model, load_classifier  # noqa: E402
from fer_hf.inference.images import LoadedImage  # noqa: E402
from fer_hf.inference.predictor import FacePredictor  # noqa: E402
from fer_hf.model_files import DEFAULT_MODEL_DIR  # noqa: E402

BOUNDS = {  # name -> predict_phases.py stubs
    "as_is": [],
    "without_reading": ["--stub_read"],
    "without_reading_and_resizing": ["--stub_read", "--stub_prepare"],
    "without_reading_resizing_and_model": ["--stub_read", "--stub_prepare", "--stub_model"],
}


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return round(statistics.median(times), 2)


def _run_seconds(command: list[str], env: dict, repeats: int = 1) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(classifier: FerClassifier, backend: str, faces: list, labels: list, folder: Path, photo: Path,
            args: argparse.Namespace, env: dict) -> dict:
    ready = classifier.preprocess(faces[: args.model_faces])[:, 0]
    classifier.logits(ready[: args.batch_size])  # warm-up: allocations, ONNX Runtime's first run
    batches = [ready[i: i + args.batch_size] for i in range(0, len(ready), args.batch_size)]
    one_at_a_time, streamed = float("inf"), float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for batch in batches:
            classifier.logits(batch)
        one_at_a_time = min(one_at_a_time, time.perf_counter() - start)
        start = time.perf_counter()  # as predict runs it: `streams` whole batches at once
        for _ in read_ahead(lambda batch: classifier.logits(batch, whole=True), batches, classifier.streams,
                            workers=classifier.streams):
            pass
        streamed = min(streamed, time.perf_counter() - start)
    # The ratio's denominator: the model alone the faster of the two ways.
    model_faces_per_s = len(ready) / min(one_at_a_time, streamed)
    start = time.perf_counter()
    classifier.predict(faces, batch_size=args.batch_size)
    batch_faces_per_s = len(faces) / (time.perf_counter() - start)
    import fer_hf.metrics  # noqa: F401  (its imports, `evaluate` and transformers, are start-up: seconds)

    start = time.perf_counter()
    evaluate_model(classifier, faces, labels, batch_size=args.batch_size)
    evaluate_faces_per_s = len(faces) / (time.perf_counter() - start)

    predict = [sys.executable, "-m", "fer_hf.predict", "--model", args.model, "--backend", backend]
    files = len(list(folder.iterdir()))
    folder_seconds = _run_seconds([*predict, str(folder), "--no_detect", "--json", "--batch_size",
                                   str(args.batch_size)], env, repeats=3)
    phases = {}
    for name, extra in (("predict_folder_phases", []), ("predict_folder_without_model", ["--stub_model"])):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(Path(__file__).with_name("predict_phases.py")), str(folder),
                               "--model", args.model, "--backend", backend, "--batch_size", str(args.batch_size),
                               *extra], env=env, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - start
        phases[name] = {**json.loads(done.stdout.splitlines()[-1]), "wall_s": round(wall, 3)}
        phases[name]["interpreter_and_exit_s"] = round(wall - phases[name]["end_s"], 3)
    bounds = {}
    if args.bounds:
        runs: dict[str, list[float]] = {name: [] for name in BOUNDS}
        for _ in range(args.bounds):  # alternated, so that a slower spell of the machine falls on every variant
            for name, stubs in BOUNDS.items():
                runs[name].append(_run_seconds([sys.executable, str(Path(__file__).with_name("predict_phases.py")),
                                                str(folder), "--model", args.model, "--backend", backend,
                                                "--batch_size", str(args.batch_size), *stubs], env))
        bounds = {"predict_folder_bounds": {
            name: {"median_s": round(statistics.median(times), 3), "runs_s": [round(t, 3) for t in times],
                   "share": round(files / statistics.median(times) / model_faces_per_s, 3)}
            for name, times in runs.items()}}
    predictor = FacePredictor(classifier)
    from PIL import Image

    image = LoadedImage.from_array(np.asarray(Image.open(photo).convert("RGB")), photo.name)
    predictor.faces(image)
    coarse = FacePredictor(classifier, scale_factor=1.2)
    return {
        "backend": classifier.backend,
        "model_faces_per_s": round(model_faces_per_s, 1),
        "model_faces_per_s_one_batch_at_a_time": round(len(ready) / one_at_a_time, 1),
        "model_faces_per_s_batches_at_once": round(len(ready) / streamed, 1),
        "streams": classifier.streams,
        "predict_folder_faces_per_s": round(files / folder_seconds, 1),
        "predict_folder_ratio": round(files / folder_seconds / model_faces_per_s, 3),
        **phases,
        **bounds,
        "batch_predict_faces_per_s": round(batch_faces_per_s, 1),
        "evaluate_faces_per_s": round(evaluate_faces_per_s, 1),
        "single_face_ms": _median_ms(lambda: classifier.predict(faces[:1]), 20),
        "photo_ms": _median_ms(lambda: predictor.faces(image), 10),
        "photo_detection_ms": _median_ms(lambda: predictor.locate(image.gray), 10),
        "photo_ms_scale_factor_1.2": _median_ms(lambda: coarse.faces(image), 10),
        "photo_boxes": [face["box"] for face in predictor.faces(image)],
        "photo_boxes_scale_factor_1.2": [face["box"] for face in coarse.faces(image)],
        "one_photo_run_s": round(_run_seconds([*predict, str(photo)], env, repeats=3), 2),
        "help_s": round(_run_seconds([*predict, "--help"], env, repeats=3), 2),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--dataset", default=str(DEFAULT_ARCHIVE))
    parser.add_argument("--batch_size", type=int, default=32, help="predict's default")
    parser.add_argument("--model_faces", type=int, default=1024, help="faces in the model-only measurement")
    parser.add_argument("--threads", type=int, default=None, help="default: every usable core")
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "pytorch"])
    parser.add_argument("--json", default=None, help="Also write the results here.")
    parser.add_argument("--bounds", type=int, default=0, metavar="N",
                        help="Also time the folder run without reading, resizing, the model: N alternated rounds.")
    args = parser.parse_args(argv)
    threads = args.threads or default_threads()
    import cv2
    import torch
    from skimage import data as skimage_data

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's installed package has its bytecode: compiling is not predict's
    compileall.compile_dir(REPO / "fer_hf", quiet=1)  # as pip does for a wheel; an editable install has none yet
    test = load_fer2013(args.dataset)["test"]
    faces, labels = list(test["image"]), list(test["label"])
    results = {"model": args.model, "faces": len(faces), "batch_size": args.batch_size, "threads": threads,
               "bytecode_cached": True, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "crops"
        folder.mkdir()
        for i, face in enumerate(faces):
            face.save(folder / f"{i:04d}.png")
        photo = Path(tmp) / "astronaut.png"
        from PIL import Image

        Image.fromarray(skimage_data.astronaut()).save(photo)
        for backend in args.backends:
            classifier = load_classifier(args.model, device="cpu", backend=backend, threads=threads)
            results["rows"].append(measure(classifier, backend, faces, labels, folder, photo, args, env))
            print(json.dumps(results["rows"][-1]), flush=True)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()
