"""A web demo: upload a photo or take one with the webcam; every face is boxed with its top emotion and the seven
probabilities of the chosen face are shown as bars.

    python -m fer_hf.app                               # the model shipped with fer_hf, http://127.0.0.1:7860
    python -m fer_hf.app --model outputs/cpu_lite0_80px --port 8000
    python -m fer_hf.app --model USER/NAME --export_space space/   # a Hugging Face Space folder for a Hub model

The page goes through `fer_hf.inference.demo` (the same face detection, cropping and classifier as `fer_hf.predict`).
A file that is not a photo, a huge or tiny image, or a photo without a face gets a message on the page, and the app
goes on serving.
"""

from __future__ import annotations

import errno
import importlib.metadata
import logging
import math
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fer_hf import cli
from fer_hf.hub import is_hub_id
from fer_hf.inference.classifier import BACKEND_HELP, THREADS_HELP, check_backend_options, load_classifier
from fer_hf.inference.demo import Analysis, analyse_file, card_accuracies, describe_accuracies
from fer_hf.inference.images import DEFAULT_MAX_MEGAPIXELS
from fer_hf.inference.predictor import FacePredictor
from fer_hf.model_files import DEFAULT_MODEL_DIR
from fer_hf.run_dir import check_replaceable, replace_folder, write_atomic

logger = logging.getLogger(__name__)

TITLE = "Facial expressions (FER-2013) — fer_hf"
MAX_UPLOAD = "50mb"  # Gradio refuses larger uploads itself; read_image bounds the decoded size below that


@dataclass
class AppArguments:
    model: str | None = field(
        default=None,
        metadata={"help": "A saved model folder or a Hub model id; default: the model shipped with fer_hf."},
    )
    host: str = field(default="127.0.0.1", metadata={"help": "Address to serve on (0.0.0.0: every interface)."})
    port: int = field(default=7860, metadata={"help": "Port to serve on."})
    export_space: str | None = field(
        default=None,
        metadata={"help": "Write a Hugging Face Space folder (app.py, requirements.txt, README.md, fer_hf/) here that "
                  "serves --model (a Hub id), then exit."},
    )
    max_megapixels: float = field(
        default=DEFAULT_MAX_MEGAPIXELS, metadata={"help": "Larger photos are decoded reduced (JPEG) or refused."}
    )
    examples_dir: str | None = field(
        default=None, metadata={"help": "Where the example photos are written (default: a temporary folder)."}
    )
    backend: str = field(default="auto", metadata={"help": BACKEND_HELP})
    threads: int | None = field(default=None, metadata={"help": THREADS_HELP})

    def __post_init__(self):
        if not (math.isfinite(self.max_megapixels) and self.max_megapixels > 0):
            raise ValueError(f"--max_megapixels must be a number above 0, got {self.max_megapixels}.")
        check_backend_options(self.backend, self.threads)


# ----------------------------------------------------------------------------------------------------- model


def model_folder(model: str | None) -> Path:
    """A local folder as is; None: the shipped model; anything else: a Hub model id, downloaded (or cached)."""
    if model is None:
        return DEFAULT_MODEL_DIR
    if Path(model).expanduser().is_dir():
        return Path(model).expanduser()
    if Path(model).expanduser().exists():
        raise NotADirectoryError(f"{model}: a file, not a model folder; pass the folder that holds config.json and "
                                 "model.safetensors.")
    if not is_hub_id(model) or Path(model).suffix:  # `model.onnx`, `run/config.json`: a path that is not there
        raise FileNotFoundError(f"{model}: no such model folder (nor a Hub id of the form USER/NAME).")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "README.md"]))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise FileNotFoundError(f"{model}: no such model folder, and could not fetch it as a Hub model id ({error}); "
                                "check the path, or the id and the connection.") from error


# ----------------------------------------------------------------------------------------------------- examples


def write_examples(folder: Path) -> list[list]:
    """Example rows [photo, is a cropped face]: scikit-image's real sample photos (a face, no face), and a few
    PrivateTest faces when the FER-2013 archive is found (FER2013_PATH)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows: list[list] = []
    try:
        import skimage.data

        for name, picture in (("astronaut", skimage.data.astronaut()), ("coffee", skimage.data.coffee())):
            path = folder / f"{name}.jpg"
            Image.fromarray(picture).save(path, quality=92)
            rows.append([str(path), False])
    except ImportError:
        logger.info("scikit-image is not installed: no example photos.")
    archive = Path(os.environ.get("FER2013_PATH", "fer2013.npz")).expanduser()
    archive = archive / "fer2013.npz" if archive.is_dir() else archive
    if archive.suffix == ".npz" and archive.is_file():
        import numpy as np

        with np.load(archive, allow_pickle=False) as data:
            test = np.flatnonzero(data["usage"] == "PrivateTest")
            labels = data["labels"][test]
            for label in (3, 5, 0):  # happy, surprise, angry: one face each
                index = test[np.flatnonzero(labels == label)[0]]
                path = folder / f"privatetest_{index}.png"
                Image.fromarray(data["pixels"][index]).save(path)
                rows.append([str(path), True])
    return rows


# ----------------------------------------------------------------------------------------------------- page


def build_demo(model_dir: Path, *, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, examples: list[list] | None = None,
               backend: str = "auto", threads: int | None = None):
    """The Gradio Blocks app for the model in `model_dir` (`backend`, `threads`: as `fer_hf.predict`'s)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a demo that may run offline
    import gradio as gr

    classifier = load_classifier(model_dir, backend=backend, threads=threads)
    predictors = {False: FacePredictor(classifier), True: FacePredictor(classifier, detect=False)}
    accuracy = describe_accuracies(card_accuracies(model_dir))

    def on_photo(path, is_crop):
        try:
            analysis = analyse_file(predictors[bool(is_crop)], path, max_megapixels)
        except Exception as error:  # the page must keep serving whatever one photo does
            logger.exception("analysing %s failed", path)
            analysis = Analysis(None, [], f"Something went wrong with this photo: {error}")
        names = analysis.face_names()
        return (analysis.image, analysis.message, gr.update(choices=names, value=names[0] if names else None),
                analysis.scores(0), analysis.faces)

    def on_choice(index, faces):
        return Analysis(None, faces or []).scores(index if index is not None else -1)

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nModel: `{model_dir.name}` — {accuracy}. Faces are found with OpenCV's Haar cascade, "
                    "made 48×48 grayscale as in FER-2013 and classified into seven emotions.")
        faces_state = gr.State([])
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Upload a photo", type="filepath", elem_id="upload")
                webcam = gr.Image(label="…or take one with the webcam", sources=["webcam"], type="filepath",
                                  elem_id="webcam")
                is_crop = gr.Checkbox(label="The photo already is a cropped face (skip face detection)",
                                      elem_id="is-crop")
            with gr.Column():
                annotated = gr.Image(label="Faces found", interactive=False, elem_id="annotated")
                status = gr.Markdown("Upload a photo, take one with the webcam, or pick an example.",
                                     elem_id="status")
                choice = gr.Radio(label="Face", choices=[], type="index", elem_id="face-choice")
                scores = gr.Label(label="Emotion probabilities of the chosen face", num_top_classes=7,
                                  elem_id="scores")
        outputs = [annotated, status, choice, scores, faces_state]
        upload.upload(on_photo, [upload, is_crop], outputs)
        webcam.input(on_photo, [webcam, is_crop], outputs)
        choice.input(on_choice, [choice, faces_state], [scores])
        if examples:
            gr.Examples(examples, [upload, is_crop], outputs, fn=on_photo, run_on_click=True, cache_examples=False,
                        label="Examples: real photos (scikit-image) and PrivateTest faces")
    return demo


# ----------------------------------------------------------------------------------------------------- Space


SPACE_APP = '''"""Hugging Face Space: fer_hf's web demo for {model}."""
from fer_hf.app import main

main(["--model", "{model}", "--host", "0.0.0.0", "--port", "7860"])
'''


def export_space(output_dir: str | os.PathLike, model: str) -> Path:
    """A Space folder (app.py, requirements.txt, README.md with the Space header, fer_hf/ without its weights) that
    serves the Hub model `model`; written beside and renamed, so a kill leaves the old folder or the new one."""
    import gradio

    target = Path(output_dir)
    check_replaceable(target, "app.py")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    package = Path(__file__).resolve().parent
    # fer_hf is not on PyPI: the Space carries the package; the model comes from the Hub, so the weights stay out.
    shutil.copytree(package, partial / "fer_hf", ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    # The base requirements and the `onnx` extra's: the Space then runs the model on ONNX Runtime (--backend auto).
    requirements = [r.split(";")[0].strip() for r in importlib.metadata.requires("fer_hf") or []
                    if "extra ==" not in r or 'extra == "onnx"' in r]
    requirements += [f"gradio=={gradio.__version__}", "scikit-image"]
    write_atomic(partial / "requirements.txt", "\n".join(requirements) + "\n")
    write_atomic(partial / "app.py", SPACE_APP.format(model=model))
    write_atomic(partial / "README.md", "\n".join([
        "---", f"title: {model.split('/')[-1]} facial expressions", "emoji: 🙂", "colorFrom: blue", "colorTo: green",
        "sdk: gradio", f"sdk_version: {gradio.__version__}", "app_file: app.py", "pinned: false",
        f"models:\n- {model}", "---", "",
        f"# Facial expressions with [{model}](https://huggingface.co/{model})", "",
        "Upload a photo or use the webcam: each face is boxed with its emotion. Made with "
        "`python -m fer_hf.app --export_space` (fer_hf).", ""]))
    return replace_folder(partial, target)


def check_port(host: str, port: int) -> None:
    """Fail before the model loads, and in words, when the demo could not serve on `host:port`. The probe binds as
    Gradio's server (uvicorn) does: IPv6 when the host has a colon, else IPv4, with SO_REUSEADDR on POSIX (so a port
    whose last connections are still closing is not refused)."""
    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port}: a port is 1-65535.")
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        resolved = socket.getaddrinfo(address, port, family, socket.SOCK_STREAM)[0][4]
    except socket.gaierror as err:
        raise ValueError(f"--host {host}: could not resolve it ({err.strerror}).") from err
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        if os.name == "posix":
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(resolved)
        except OSError as err:
            why = {errno.EADDRINUSE: "in use (another demo or program?); choose another with --port N",
                   errno.EACCES: "not allowed (ports below 1024 need privileges); choose another with --port N",
                   errno.EADDRNOTAVAIL: "not an address of this machine; use 127.0.0.1, 0.0.0.0 (every interface) "
                                        "or one of its own addresses with --host"}.get(err.errno, err.strerror)
            raise OSError(f"cannot serve on {host}:{port}: {why}.") from err


# ----------------------------------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    (args,) = cli.parse(cli.make_parser("fer_hf.app", __doc__, AppArguments), argv)
    cli.setup_logging()
    if args.export_space:
        if not is_hub_id(args.model):
            raise ValueError("--export_space needs --model USER/NAME: a Space loads its model from the Hub "
                             "(push a run with python -m fer_hf.push first).")
        print(f"Space folder written to {export_space(args.export_space, args.model)}")
        return 0
    check_port(args.host, args.port)
    model_dir = model_folder(args.model)
    examples_dir = Path(args.examples_dir or tempfile.mkdtemp(prefix="fer_hf_examples_"))
    demo = build_demo(model_dir, max_megapixels=args.max_megapixels, examples=write_examples(examples_dir),
                      backend=args.backend, threads=args.threads)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD,
                allowed_paths=[str(examples_dir)])
    return 0


if __name__ == "__main__":
    with cli.exit_on_bad_input("fer_hf.app"):
        sys.exit(main(sys.argv[1:]))
