"""The web demo's latency on this machine: start-up (process start to the page served) and one photo answered
through the page's own API (upload, detection, classification, the annotated image back), beside the same photo
analysed in-process (no web).

    OMP_NUM_THREADS=1 python benchmarks/app_latency.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    import skimage.data
    from gradio_client import Client, handle_file
    from PIL import Image

    from fer_hf.inference.classifier import load_classifier
    from fer_hf.inference.demo import analyse_file
    from fer_hf.inference.predictor import FacePredictor

    photo = Path(tempfile.mkdtemp()) / "astronaut.jpg"
    Image.fromarray(skimage.data.astronaut()).save(photo, quality=92)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "fer_hf.app", "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        startup = time.perf_counter() - started
        client = Client(url, verbose=False)
        page = []
        for _ in range(args.runs + 1):
            t = time.perf_counter()
            result = client.predict(handle_file(str(photo)), False, api_name="/on_photo")
            page.append(time.perf_counter() - t)
        assert "1 face found" in result[1], result[1]
    finally:
        server.terminate()
        server.wait(timeout=30)

    predictor = FacePredictor(load_classifier())
    analyse_file(predictor, photo)
    local = []
    for _ in range(args.runs):
        t = time.perf_counter()
        analyse_file(predictor, photo)
        local.append(time.perf_counter() - t)

    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, cores: {os.cpu_count()}")
    print(f"| start-up (process start to page served) | {startup:.1f} s |")
    print(f"| one photo through the page's API (median of {args.runs}, first call dropped) | "
          f"{1000 * statistics.median(page[1:]):.0f} ms |")
    print(f"| the same photo analysed in-process (median of {args.runs}) | {1000 * statistics.median(local):.0f} ms |")


if __name__ == "__main__":
    main()
