"""How long FER-2013 takes to load from fer2013.csv the first time (parse + cache) and from the cache afterwards, and
the peak resident memory of each, every load in a fresh Python process.

    python benchmarks/loading.py [--csv fer2013.csv] [--json OUT]

Without `--csv`, a fer2013.csv is written from the real archive (fer2013.npz, found like the tests find it) into a
temporary folder first. Each load also times turning the splits into the uint8 tensors the batch pipeline uses.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "fer2013" / "fer2013.npz"

# Runs in a fresh interpreter so that its peak memory is the load's alone (plus the imports, reported apart).
# Peak RSS is read from VmHWM (this process image's high-water mark): getrusage's ru_maxrss would carry over the
# parent's peak through fork and exec.
CHILD = """
import json, resource, sys, time

def peak_mb():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

from fer_hf.data.load import decode_faces, load_fer2013
imports_mb = peak_mb()
start = time.perf_counter()
dataset = load_fer2013(sys.argv[1], cache_dir=sys.argv[2])
seconds = time.perf_counter() - start
start = time.perf_counter()
faces = {split: decode_faces(part) for split, part in dataset.items()}
decode_seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "decode_seconds": decode_seconds, "imports_peak_rss_mb": imports_mb,
                  "peak_rss_mb": peak_mb(), "rows": {split: len(part) for split, part in dataset.items()}}))
"""


def archive_path() -> Path | None:
    """fer2013.npz from FER2013_PATH (file or folder), else ../shared/data/fer2013; None if absent."""
    candidate = Path(os.environ.get("FER2013_PATH", DEFAULT_ARCHIVE))
    if candidate.is_dir():
        candidate = candidate / "fer2013.npz"
    return candidate if candidate.is_file() else None


def write_csv(pixels: np.ndarray, labels: np.ndarray, usage: np.ndarray, path: Path) -> Path:
    """Write faces in the Kaggle fer2013.csv layout (emotion,pixels,Usage)."""
    numbers = [str(value) for value in range(256)]
    with path.open("w") as file:
        file.write("emotion,pixels,Usage\n")
        for face, label, use in zip(pixels.reshape(len(pixels), -1), labels, usage, strict=True):
            file.write(f"{int(label)},{' '.join([numbers[v] for v in face.tolist()])},{use}\n")
    return path


def csv_from_archive(archive: Path, folder: Path) -> Path:
    with np.load(archive) as data:
        return write_csv(data["pixels"], data["labels"], data["usage"], folder / "fer2013.csv")


def load_once(csv: Path, cache_dir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, str(csv), str(cache_dir)], capture_output=True, text=True,
                          env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"loading {csv} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - start
    return result


def measure_loading(csv: Path | None = None, work_dir: Path | None = None) -> dict:
    """First load (parse + cache) and second load (cache) of `csv`, each in a fresh process."""
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        tmp = Path(tmp)
        written = None
        if csv is None:
            archive = archive_path()
            if archive is None:
                raise FileNotFoundError("no --csv given and no fer2013.npz found (set FER2013_PATH).")
            start = time.perf_counter()
            csv = csv_from_archive(archive, tmp)
            written = time.perf_counter() - start
        first = load_once(csv, tmp / "cache")
        cached = load_once(csv, tmp / "cache")
        size_mb = round(csv.stat().st_size / 2**20, 1)
    return {"csv": str(csv) if written is None else "fer2013.csv written from the archive", "csv_mb": size_mb,
            "csv_written_from_archive_seconds": written, "first": first, "cached": cached}


def format_loading(result: dict) -> str:
    lines = [f"loading {result['csv']} ({result['csv_mb']} MB), each in a fresh process:",
             f"{'load':<8} {'seconds':>8} {'to tensors s':>13} {'peak RSS MB':>12} {'(imports MB)':>13}"]
    for name in ("first", "cached"):
        r = result[name]
        lines.append(f"{name:<8} {r['seconds']:8.2f} {r['decode_seconds']:13.2f} {r['peak_rss_mb']:12.0f} "
                     f"{r['imports_peak_rss_mb']:13.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=None, help="fer2013.csv (default: written from the archive)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    result = measure_loading(args.csv)
    print(format_loading(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
