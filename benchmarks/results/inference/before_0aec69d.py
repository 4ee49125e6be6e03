"""How the "before" column of RESULTS.md's Inference table was measured: fer_hf at 0aec69d checked out in /tmp/before,
the 3,589 PrivateTest crops saved as PNG files in /tmp/pt_png, 2 threads."""

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image
from skimage import data

env = {**os.environ, "OMP_NUM_THREADS": "2"}


def run(cmd, repeats=1):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, cwd="/tmp/before", env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 2)


Image.fromarray(data.astronaut()).save("/tmp/astronaut.png")
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd="/tmp/before", capture_output=True, text=True)
out = {"commit": commit.stdout.strip(),
       "predict_folder_s": run([sys.executable, "-m", "fer_hf.predict", "/tmp/pt_png", "--no_detect", "--json"]),
       "one_photo_run_s": run([sys.executable, "-m", "fer_hf.predict", "/tmp/astronaut.png"], 3),
       "help_s": run([sys.executable, "-m", "fer_hf.predict", "--help"], 3)}
out["predict_folder_faces_per_s"] = round(3589 / out["predict_folder_s"], 1)
# in-process: photo latency and evaluate speed of the old code
code = r'''
import json, statistics, time, sys
sys.path.insert(0, "/tmp/before")
import numpy as np, torch
torch.set_num_threads(2)
from skimage import data
from fer_hf.inference.classifier import load_classifier, evaluate_model
from fer_hf.inference.predictor import FacePredictor
from fer_hf.inference.images import LoadedImage
from fer_hf.data.load import load_fer2013
c = load_classifier(device="cpu"); p = FacePredictor(c)
img = LoadedImage.from_array(data.astronaut(), "a"); p.faces(img)
ts = []
for _ in range(10):
    t = time.perf_counter(); p.faces(img); ts.append(1000 * (time.perf_counter() - t))
test = load_fer2013("/work/shared/data/fer2013")["test"]
faces, labels = list(test["image"]), list(test["label"])
t = time.perf_counter(); evaluate_model(c, faces, labels, batch_size=32); ev = len(faces) / (time.perf_counter() - t)
print(json.dumps({"photo_ms": round(statistics.median(ts), 1), "evaluate_faces_per_s": round(ev, 1),
                  "file": __import__("fer_hf").__file__}))
'''
result = subprocess.run([sys.executable, "-c", code], cwd="/tmp", env=env, capture_output=True, text=True)
out.update(json.loads(result.stdout.strip().splitlines()[-1]))
print(json.dumps(out))
Path("/tmp/before_bench.json").write_text(json.dumps(out, indent=2))
