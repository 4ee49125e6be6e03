"""fer_hf.app, the web demo: what one photo gives (no browser), the Space export, and the page itself driven in
Debian's headless Chromium through Playwright."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, center_inside, require_module, skip_or_fail
from fer_hf import app
from fer_hf.inference.classifier import load_classifier
from fer_hf.inference.demo import NO_FACE_MESSAGE, analyse_file, card_accuracies, describe_accuracies
from fer_hf.inference.predictor import FacePredictor
from fer_hf.labels import LABEL_NAMES
from fer_hf.model_files import DEFAULT_MODEL_DIR
from fer_hf.run_dir import read_results


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    skimage_data = require_module("skimage.data", 'pip install -e ".[dev]"')
    folder = tmp_path_factory.mktemp("photos")
    astronaut = skimage_data.astronaut()
    paths = {"face": folder / "astronaut.jpg", "none": folder / "coffee.jpg", "two": folder / "two_faces.png",
             "text": folder / "notes.txt", "tiny": folder / "tiny.png", "huge": folder / "huge.png"}
    Image.fromarray(astronaut).save(paths["face"])
    Image.fromarray(skimage_data.coffee()).save(paths["none"])
    Image.fromarray(np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)).save(paths["two"])
    paths["text"].write_text("not a photo\n")
    Image.new("RGB", (1, 1), "white").save(paths["tiny"])
    Image.new("L", (6000, 6000), 128).save(paths["huge"], optimize=True)  # 36 MP: over a 20 MP limit, tiny file
    return paths


@pytest.fixture(scope="module")
def predictor() -> FacePredictor:
    return FacePredictor(load_classifier())


# ----------------------------------------------------------------------------------------------------- one photo


def test_a_photo_with_a_face(predictor, photos):
    analysis = analyse_file(predictor, photos["face"])
    assert len(analysis.faces) == 1 and center_inside(analysis.faces[0]["box"])
    assert analysis.message.startswith("1 face found: Face 1: ")
    assert set(analysis.scores(0)) == set(LABEL_NAMES) and abs(sum(analysis.scores(0).values()) - 1) < 1e-3
    assert analysis.image.shape == (512, 512, 3)
    assert analysis.scores(5) == {}


def test_two_faces_are_numbered_in_order(predictor, photos):
    analysis = analyse_file(predictor, photos["two"])
    assert [name.split(":")[0] for name in analysis.face_names()] == ["Face 1", "Face 2"]
    assert analysis.message.startswith("2 faces found")


@pytest.mark.parametrize("kind, expected", [
    ("none", NO_FACE_MESSAGE),
    ("tiny", NO_FACE_MESSAGE),
    ("text", "Could not use notes.txt: "),
    ("huge", "Could not use huge.png: "),
])
def test_bad_photos_become_a_message(predictor, photos, kind, expected):
    analysis = analyse_file(predictor, photos[kind], max_megapixels=20)
    assert analysis.message.startswith(expected)
    assert analysis.faces == []
    assert str(photos[kind].parent) not in analysis.message  # the server's upload folder is not shown


def test_accuracies_come_from_the_model_card():
    accuracies = card_accuracies(DEFAULT_MODEL_DIR)
    results = read_results(DEFAULT_MODEL_DIR)
    assert accuracies == pytest.approx({"validation": results["eval_accuracy"], "test": results["test_accuracy"]},
                                       abs=1e-4)
    assert "test (PrivateTest) accuracy" in describe_accuracies(accuracies)
    assert card_accuracies(REPO / "configs") == {}


# ----------------------------------------------------------------------------------------------------- model, Space


def test_a_hub_model_offline_is_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="no such model folder, and could not fetch it as a Hub model id"):
        app.model_folder("nobody-here/no-such-model-xyz")
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        app.model_folder("outputs/runs/missing_run")
    assert app.model_folder(None) == DEFAULT_MODEL_DIR


def test_a_busy_port_or_a_bad_address_is_said_before_the_model_loads(monkeypatch):
    def no_model(model):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(app, "model_folder", no_model)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=rf"cannot serve on 127\.0\.0\.1:{port}: in use .*choose another with --p"):
            app.main(["--port", str(port)])
    for bad in ("70000", "0"):  # 0 would make Gradio pick a port and print a URL with :0
        with pytest.raises(ValueError, match=f"--port {bad}: a port is 1-65535"):
            app.main(["--port", bad])
    with pytest.raises(ValueError, match="--host no-such-host.invalid: could not resolve it"):
        app.main(["--host", "no-such-host.invalid"])
    with pytest.raises(OSError, match="192.0.2.1:.*not an address of this machine"):  # TEST-NET-1: never local
        app.main(["--host", "192.0.2.1"])
    app.check_port("127.0.0.1", port)  # free again once the other socket is closed
    try:  # where this machine has an IPv6 loopback, the bracketed form Gradio takes is checked as IPv6
        with socket.socket(socket.AF_INET6) as loopback6:
            loopback6.bind(("::1", 0))
            free6 = loopback6.getsockname()[1]
    except OSError:
        return
    app.check_port("[::1]", free6)


def test_export_space_writes_a_space_folder(tmp_path):
    from huggingface_hub import metadata_load

    out = tmp_path / "space"
    assert app.main(["--model", "someone/fer-lite0", "--export_space", str(out)]) == 0
    header = metadata_load(out / "README.md")
    assert header["sdk"] == "gradio" and header["app_file"] == "app.py" and header["models"] == ["someone/fer-lite0"]
    source = (out / "app.py").read_text()
    compile(source, "app.py", "exec")
    assert '"--model", "someone/fer-lite0"' in source
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert any(r.startswith("gradio==") for r in requirements) and any(r.startswith("torch") for r in requirements)
    assert any(r.startswith("onnxruntime") for r in requirements) and not any(";" in r for r in requirements)
    assert (out / "fer_hf" / "app.py").is_file() and not list(out.rglob("*.safetensors"))
    # the copied package is importable as the Space will import it
    check = subprocess.run([sys.executable, "-c", "import fer_hf.app, fer_hf.inference.demo; print(fer_hf.__file__)"],
                           cwd=out, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and str(out) in check.stdout, check.stderr
    # a second export replaces the first whole; a folder holding a file it did not write is refused, file kept
    app.export_space(out, "someone/other")
    assert "someone/other" in (out / "app.py").read_text() and not (tmp_path / "space.partial").exists()
    (out / "mine.txt").write_text("the user's")
    with pytest.raises(FileExistsError, match=r"holds mine\.txt, which this command did not write"):
        app.export_space(out, "someone/third")
    assert (out / "mine.txt").read_text() == "the user's" and "someone/other" in (out / "app.py").read_text()


def test_export_space_needs_a_hub_id(tmp_path):
    with pytest.raises(ValueError, match="--export_space needs --model USER/NAME"):
        app.main(["--export_space", str(tmp_path / "space")])


# ----------------------------------------------------------------------------------------------------- browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`python -m fer_hf.app` on a loopback port, as a user starts it; yields its URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    started = time.perf_counter()
    with open(log, "w") as handle:
        server = subprocess.Popen([sys.executable, "-m", "fer_hf.app", "--port", str(port)], stdout=handle,
                                  stderr=subprocess.STDOUT, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.perf_counter() - started > 180:
                    pytest.fail(f"the app did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        print(f"app started in {time.perf_counter() - started:.1f} s")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def page(served):
    playwright_api = require_module("playwright.sync_api", 'pip install -e ".[dev]"')
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        skip_or_fail("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    with playwright_api.sync_playwright() as playwright:
        # Chromium's fake camera (a moving test pattern, no face) stands in for a webcam, permission granted.
        browser = playwright.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"])
        context = browser.new_context(viewport={"width": 1280, "height": 1000}, permissions=["camera"])
        page = context.new_page()
        page.goto(served)
        page.locator("#upload").wait_for(timeout=60_000)
        yield page
        browser.close()


def _upload(page, path: Path, expected: str) -> str:
    """Upload `path` through the page's file input, as a user would (clearing the previous file first); wait until
    the status says `expected`; return the status."""
    clear = page.locator("#upload button[aria-label=Clear]")
    if clear.count():
        clear.click()
    page.locator("#upload input[type=file]").set_input_files(str(path))
    return _wait_for_status(page, expected)


def _wait_for_status(page, expected: str) -> str:
    """Wait until the status says `expected`; return the status, or fail showing what it says instead."""
    status = page.locator("#status")
    try:
        status.filter(has_text=expected).wait_for(timeout=60_000)
    except Exception as error:  # Playwright's TimeoutError: say what the page shows
        pytest.fail(f"the status never said {expected!r}; it says {status.inner_text()!r} ({error})")
    return status.inner_text()


@pytest.mark.slow
def test_the_page_in_a_real_browser(page, photos, tmp_path):
    text = _upload(page, photos["face"], "1 face found")
    assert "Face 1: " in text
    top = text.split("Face 1: ", 1)[1].split(" ")[0]
    assert top in LABEL_NAMES
    assert page.locator("#face-choice input[type=radio]").count() == 1
    assert top in page.locator("#scores").inner_text()
    page.locator("#annotated img").wait_for()

    assert "No face found" in _upload(page, photos["none"], "No face found")
    assert page.locator("#face-choice input[type=radio]").count() == 0

    assert "notes.txt" in _upload(page, photos["text"], "Could not use notes.txt")
    # the app keeps serving: the next photo works
    _upload(page, photos["two"], "2 faces found")
    assert page.locator("#face-choice input[type=radio]").count() == 2
    page.locator("#face-choice label").nth(1).click()
    page.wait_for_timeout(500)
    assert page.locator("#face-choice input[type=radio]").nth(1).is_checked()
    artifacts = Path(os.environ.get("FER_HF_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "app_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # an example photo runs when clicked
    page.get_by_text("astronaut.jpg", exact=True).first.click()
    _wait_for_status(page, "1 face found")

    # a webcam snapshot goes through the same path (the fake camera shows no face). The capture button shows before
    # the stream has a frame; a capture then is an empty canvas, so wait until the video plays, as a user would.
    page.locator("#webcam").get_by_text("Click to Access Webcam").click()
    page.wait_for_function("() => { const v = document.querySelector('#webcam video');"
                           " return v !== null && v.readyState >= 2 && v.videoWidth > 0 && v.currentTime > 0; }",
                           timeout=60_000)
    page.locator("#webcam button[aria-label='capture photo']").click(timeout=30_000)
    _wait_for_status(page, "No face found")

    page.screenshot(path=str(artifacts / "app_webcam.png"), full_page=True)
    (artifacts / "app_status.json").write_text(json.dumps({"status": page.locator("#status").inner_text()}))
