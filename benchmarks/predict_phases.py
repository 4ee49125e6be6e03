"""Where the time of `python -m fer_hf.predict FOLDER --no_detect --json` goes, timed inside one such run.

    python benchmarks/predict_phases.py FOLDER [--model DIR] [--backend B] [--batch_size N]
        [--stub_model] [--stub_read] [--stub_prepare]

Runs predict's `main` in this process (its JSON goes to /dev/null) and prints one JSON object: seconds from this
script's start to the entry module imported, the inputs listed, the model loaded, the first model run started and
ended, and the end; the faces per second after the first run; and the process's CPU seconds. The interpreter's own
start-up comes before this script runs: `benchmarks/inference.py` adds it from the wall time.

Stubs take one part of the work away, to measure what the rest costs (outputs are then meaningless):
`--stub_model`: the model returns zeros at once (the pipeline's own cost: reading, preparing, records, JSON);
`--stub_read`: every listed file is a constant 48x48 face, its file never opened (no file reading, no decoding);
`--stub_prepare`: resizing and cropping return zeros of their output's shape (no Pillow resize).
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from contextlib import redirect_stdout  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--model", default=None)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--stub_model", action="store_true")
    parser.add_argument("--stub_read", action="store_true")
    parser.add_argument("--stub_prepare", action="store_true")
    args = parser.parse_args(argv)
    marks: dict[str, float] = {}
    lock = threading.Lock()

    def mark(name: str) -> None:
        with lock:
            marks.setdefault(name, round(time.perf_counter() - START, 4))

    import numpy as np

    import fer_hf.inference.predictor as predictor
    import fer_hf.predict as predict

    mark("imported_s")
    read_plain_gray = predictor.read_plain_gray
    if args.stub_read:
        face = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
        predictor.read_plain_gray = lambda path, *_, **__: face.copy()
    expand_inputs, load_classifier = predict.expand_inputs, predict.load_classifier

    counted: list[int] = []

    def listed(*given, **kwargs):
        files, errors = expand_inputs(*given, **kwargs)
        mark("listed_s")
        counted.append(len(files))
        return files, errors

    def loaded(*given, **kwargs):
        classifier = load_classifier(*given, **kwargs)
        mark("loaded_s")
        for name in ("_run", "_run_whole"):
            run = getattr(classifier, name)
            if args.stub_model:
                labels = len(classifier.label_names)
                run = lambda pixels, labels=labels: np.zeros((len(pixels), labels), np.float32)  # noqa: E731

            def timed(pixels, run=run):
                mark("first_run_start_s")
                out = run(pixels)
                mark("first_run_end_s")
                return out

            setattr(classifier, name, timed)
        if args.stub_prepare:
            prepare = classifier.preprocess.prepare
            shapes: dict[str, tuple] = {}

            def zeros(faces, tta="none"):  # the real output's shape, taken from one face
                if tta not in shapes:
                    shapes[tta] = prepare(faces[:1], tta).shape[1:]
                return np.zeros((len(faces), *shapes[tta]), np.uint8)

            classifier.preprocess.prepare = zeros
        return classifier

    command = [args.folder, "--no_detect", "--json", "--batch_size", str(args.batch_size), "--backend", args.backend]
    if args.model:
        command += ["--model", args.model]
    predict.expand_inputs, predict.load_classifier = listed, loaded
    try:
        with open(os.devnull, "w") as devnull, redirect_stdout(devnull):
            status = predict.main(command)
    finally:
        predict.expand_inputs, predict.load_classifier = expand_inputs, load_classifier
        predictor.read_plain_gray = read_plain_gray
    mark("end_s")
    files = counted[0]  # the image files predict listed
    usage = resource.getrusage(resource.RUSAGE_SELF)
    after = marks["end_s"] - marks.get("first_run_end_s", marks["end_s"])  # no run: no file read
    result = {
        "stub_model": args.stub_model,
        "stub_read": args.stub_read,
        "stub_prepare": args.stub_prepare,
        "files": files,
        "exit_status": status,
        **marks,
        # The first batch is done when the first run ends; the rest of the folder after it.
        "after_first_run_faces_per_s": round((files - args.batch_size) / after, 1) if after > 0 else None,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
    from fer_hf import cli

    cli.exit_now(0)  # as `python -m fer_hf.predict` ends, so that the exit this run times is predict's
