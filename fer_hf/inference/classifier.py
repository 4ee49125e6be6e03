"""Run a saved model on face images: ONNX Runtime or PyTorch, with optional test-time augmentation (TTA).

Preprocessing is the evaluation transform used in training (`fer_hf.inference.preprocess`, equal to the processor's
`val_transforms` to the bit), so a face scored here is scored exactly as the validation split was.

Backends. `auto` (the default) runs a model folder on ONNX Runtime when it is installed and no NVIDIA GPU is in use:
on a CPU it is about three times as fast as PyTorch for these small networks (`benchmarks/RESULTS.md`). The folder is
exported once and cached (`fer_hf.inference.onnx_export.cached_onnx`), after which neither torch nor transformers is
imported at all. `pytorch` keeps the model in PyTorch (the default on a GPU): the timm module alone, without
transformers (`fer_hf.timm_module`); if an export ever fails, `auto` says so and uses PyTorch. Loading a PyTorch model
onto a CPU has the process keep the memory it frees (`fer_hf.allocator`: process-wide), 1.5-3x its speed here.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from fer_hf.inference.background import chunks, read_ahead
from fer_hf.inference.onnx_export import ONNX_CONFIG_KEY, ONNX_DATA_CONFIG_KEY, ONNX_WEIGHTS_KEY, cached_onnx
from fer_hf.inference.preprocess import TTA_MODES, VIEWS_PER_FACE, FacePreprocessor, check_tta
from fer_hf.model_files import DEFAULT_MODEL_DIR, error_summary, label_names, read_model_config

logger = logging.getLogger(__name__)

__all__ = ["BACKENDS", "ONNX_CONFIG_KEY", "TTA_MODES", "FerClassifier", "ensemble_probabilities", "evaluate_model",
           "load_classifier", "softmax", "view_logits"]

BACKENDS = ("auto", "onnxruntime", "pytorch")
BACKEND_HELP = ("auto (ONNX Runtime on a CPU when installed: a model folder is exported once and cached; PyTorch on a "
                "GPU), onnxruntime or pytorch.")  # the --backend of predict and evaluate
THREADS_HELP = ("ONNX Runtime threads; default OMP_NUM_THREADS, else every usable core (PyTorch uses torch's own "
                "setting).")  # the --threads of predict, evaluate and the web demo
MIN_SPLIT = 4  # faces per concurrent ONNX Runtime run, at least
# Input pixels per ONNX Runtime run on a CPU, at most (8 faces at 96 px, 32 at 48, 1 at 224): a larger batch runs as
# several. Measured on the 2-core VM with the shipped 96 px model, one thread: 830-880 core-microseconds a face in runs
# of 4 to 16 faces, 940-1,030 in runs of 32, 1,090-1,170 in runs of 64 (presumably the activations of a larger run no
# longer stay in the cache between layers; they grow with the input's pixels).
RUN_PIXELS = 8 * 96 * 96
# Input pixels per PyTorch forward pass, at most (CPU: 64 faces at 96 px; GPU: 1,024): larger batches run in pieces,
# since one pass holds every activation of its batch.
TORCH_CPU_RUN_PIXELS = 64 * 96 * 96
TORCH_DEVICE_RUN_PIXELS = 1024 * 96 * 96


class FerClassifier:
    """A FER model with its preprocessing: `predict(faces)` on PIL faces, `logits(pixel_values)` on ready inputs."""

    def __init__(
        self,
        config: dict,
        data_config: dict,
        run: Callable[[np.ndarray], np.ndarray],
        backend: str,
        model=None,
        streams: int = 1,
        run_whole: Callable[[np.ndarray], np.ndarray] | None = None,
        device: str = "cpu",
    ):
        self.config = config  # the model's config.json
        self.data_config = dict(data_config)
        self.model = model  # the PyTorch module behind `run`, when there is one
        self.backend = backend
        self.device = device  # where the model runs: "cpu", else a torch device type or ONNX Runtime provider
        # Batches worth running at once, each by `logits(..., whole=True)` (ONNX Runtime: one per thread, one thread
        # each); `run` alone splits one batch across them.
        self.streams = streams
        self._run = run
        self._run_whole = run_whole or run
        self.preprocess = FacePreprocessor(self.data_config)
        self.label_names: list[str] = label_names(config)

    def logits(self, pixel_values, whole: bool = False) -> np.ndarray:
        """(N, C, H, W) normalised pixels (numpy or torch) -> (N, num_labels) float32 logits. `whole`: in one run,
        for a caller that runs `streams` batches at once."""
        if not isinstance(pixel_values, np.ndarray):
            pixel_values = pixel_values.numpy()
        return (self._run_whole if whole else self._run)(np.ascontiguousarray(pixel_values, dtype=np.float32))

    def views(self, tta: str = "none") -> Callable[[Image.Image], np.ndarray]:
        """The function turning one face into its stack of views, (V, C, H, W): 1, 2 or 10 views."""
        check_tta(tta)
        return lambda face: self.preprocess([face], tta)[0]

    def predict(self, faces: Sequence[Image.Image], tta: str = "none", batch_size: int = 64) -> np.ndarray:
        """Logits (N, num_labels) for PIL faces, averaged over the TTA views."""
        return view_logits(self, faces, tta, batch_size).mean(axis=1)


def check_backend_options(backend: str, threads: int | None) -> None:
    """--backend and --threads as the entry modules take them: a usage error before any model is loaded."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {BACKENDS}, got {backend!r}.")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}.")


def _in_pieces(run: Callable[[np.ndarray], np.ndarray], pixel_values: np.ndarray, size: int | None) -> np.ndarray:
    """`run` on `pixel_values` in slices of at most `size` faces (None: whole), the outputs concatenated."""
    if size is None or len(pixel_values) <= size:
        return run(pixel_values)
    return np.concatenate([run(pixel_values[i: i + size]) for i in range(0, len(pixel_values), size)])


def load_classifier(
    model_dir: str | os.PathLike | None = None,
    *,
    onnx_path: str | os.PathLike | None = None,
    device: str | None = None,
    backend: str = "auto",
    threads: int | None = None,
) -> FerClassifier:
    """A saved model folder, or an exported `.onnx` file (ONNX Runtime; config from its metadata or `model_dir`).
    With neither: the model shipped inside the package (`DEFAULT_MODEL_DIR`).

    `backend`: `auto`, `onnxruntime` or `pytorch` (see the module docstring); `threads`: ONNX Runtime's threads
    (default: OMP_NUM_THREADS, else the cores this process may use)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}.")
    if onnx_path is not None:
        if backend == "pytorch":
            raise ValueError("an --onnx file runs on ONNX Runtime, not PyTorch; drop --backend pytorch, or drop "
                             "--onnx to run the model folder on PyTorch.")
        return _load_onnx(Path(onnx_path), model_dir, threads, providers=_onnx_providers(device))
    model_dir = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
    chosen = choose_backend(backend, device)
    if chosen == "onnxruntime":
        read_model_config(model_dir)  # a folder that is no model is named as such, before any export
        try:
            cached = cached_onnx(model_dir)
            try:
                # The cache's name is a digest of the folder's weights: no second digest to check it by.
                return _load_onnx(cached, model_dir, threads, providers=["CPUExecutionProvider"], check_source=False)
            except Exception:  # a cached file damaged since: the next run exports it again
                cached.unlink(missing_ok=True)
                raise
        except Exception as err:  # an export torch or ONNX cannot do; `auto` must never be worse than PyTorch
            if backend != "auto":
                raise
            logger.warning("%s: could not run it on ONNX Runtime (%s); using PyTorch.", model_dir, error_summary(err))
    return _load_pytorch(model_dir, device)


def _onnx_providers(device: str | None) -> list[str] | None:
    """ONNX Runtime's providers for `--device`: None (every one installed) where no device is asked for."""
    if device is None:
        return None
    kind = device.split(":")[0].lower()
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    import onnxruntime

    if kind == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        index = int(device.split(":")[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise ValueError(f"this ONNX Runtime cannot run on --device {device} (its providers: "
                     f"{', '.join(onnxruntime.get_available_providers())}); drop --device, or install "
                     "onnxruntime-gpu for cuda.")


def choose_backend(backend: str, device: str | None) -> str:
    """`auto` -> `onnxruntime` on a CPU where onnxruntime and onnx are installed, else `pytorch`."""
    if backend == "onnxruntime" and device not in (None, "cpu"):
        raise ValueError(f"the onnxruntime backend runs on the CPU; drop --device {device} or use --backend pytorch.")
    if backend != "auto":
        return backend
    if device not in (None, "cpu") or (device is None and gpu_visible()):
        return "pytorch"
    return "onnxruntime" if importlib.util.find_spec("onnxruntime") is not None else "pytorch"


def gpu_visible() -> bool:
    """Whether torch would use a GPU by default. Only asked of torch (seconds to import) where a GPU driver shows
    one (NVIDIA's, or ROCm's /dev/kfd): a container or job without a GPU on such a host still gets ONNX Runtime."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    if not (gpus.is_dir() and any(gpus.iterdir())) and not Path("/dev/kfd").exists():
        return False
    import torch

    return torch.cuda.is_available()


def default_threads() -> int:
    """OMP_NUM_THREADS when set (the benchmarks' convention), else the cores this process may run on: its CPU
    affinity, capped by a cgroup CPU quota (a container started with --cpus=2 on a 64-core host gets 2)."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def checked_device(device: str):
    """`device` as a torch.device that this machine has: a bad name or a GPU that is not there is bad input (a
    ValueError naming --device), not torch's traceback at the first batch."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device}: not a device torch knows ({str(err).splitlines()[0]}); use cpu, "
                         "cuda or cuda:N.") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {device}: no CUDA GPU is usable here (torch.cuda.is_available() is False); "
                             "use --device cpu, or leave --device out.")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}.")
    elif parsed.type not in ("cpu", "mps") or (parsed.type == "mps" and not torch.backends.mps.is_available()):
        raise ValueError(f"--device {device}: not available here; use cpu or cuda.")
    return parsed


def _load_pytorch(model_dir: Path, device: str | None) -> FerClassifier:
    import torch

    from fer_hf.allocator import keep_freed_memory
    from fer_hf.timm_module import data_config_of, load_timm_module

    device = checked_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        keep_freed_memory()  # else every batch page-faults its activations in again: half of PyTorch's time or more
    # The timm module alone (no transformers: 0.7-1.2 s of start-up); float32 whatever the stored dtype.
    model, config = load_timm_module(model_dir, dtype=torch.float32)
    model = model.to(device)

    data_config = data_config_of(config)
    height, width = data_config["input_size"][1:]
    max_run = max(1, (TORCH_CPU_RUN_PIXELS if device.type == "cpu" else TORCH_DEVICE_RUN_PIXELS) // (height * width))

    def forward(pixel_values: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(pixel_values).to(device)).float().cpu().numpy()

    @torch.inference_mode()
    def run(pixel_values: np.ndarray) -> np.ndarray:
        # In pieces: one forward pass holds every activation of its batch (--batch_size 1024: 6.5 GB on a CPU).
        return _in_pieces(forward, pixel_values, max_run)

    return FerClassifier(config, data_config, run, backend=f"pytorch ({device})", model=model, device=device.type)


def _load_onnx(path: Path, model_dir: str | os.PathLike | None, threads: int | None,
               providers: list[str] | None = None, check_source: bool = True) -> FerClassifier:
    import onnxruntime

    if path.is_dir():
        raise IsADirectoryError(f"{path}: a folder, not an ONNX file; pass the .onnx file (or the folder as --model "
                                "if it is a saved model).")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such ONNX file; create it with `python -m fer_hf.export MODEL_DIR --onnx {path}`."
        )
    threads = threads or default_threads()
    options = onnxruntime.SessionOptions()
    # One thread per run, and a batch split across `threads` concurrent runs (a session is safe to run from several
    # threads): as fast as ONNX Runtime's own 2 threads on the model alone, and much faster beside the thread that
    # reads images, because no operator waits at a barrier for a thread the reader has displaced.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings are about graph rewrites, not the user's input
    # AzureExecutionProvider (listed by the PyPI wheel) runs models remotely; never that.
    providers = providers or [p for p in onnxruntime.get_available_providers() if p != "AzureExecutionProvider"]
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf types, not exported in a stable place
        raise ValueError(f"{path}: not a loadable ONNX model ({err}); export it again with fer_hf.export.") from err
    metadata = session.get_modelmeta().custom_metadata_map
    if check_source and model_dir is not None and ONNX_CONFIG_KEY in metadata:
        _check_same_model(path, model_dir, metadata)
    if ONNX_CONFIG_KEY in metadata:
        config = json.loads(metadata[ONNX_CONFIG_KEY])
    elif model_dir is not None:
        config = read_model_config(model_dir)
    else:
        raise ValueError(f"{path}: has no embedded fer_hf config; pass the model folder it came from with --model.")
    if ONNX_DATA_CONFIG_KEY in metadata:
        data_config = json.loads(metadata[ONNX_DATA_CONFIG_KEY])
    else:  # exported before the data config was embedded: timm resolves it from the config (imports torch)
        from fer_hf.timm_module import data_config_of

        data_config = data_config_of(config)
    input_name = session.get_inputs()[0].name
    height, width = data_config["input_size"][1:]
    on_cpu = session.get_providers()[0] == "CPUExecutionProvider"
    max_run = max(1, RUN_PIXELS // (height * width)) if on_cpu else None

    def run_one(pixel_values: np.ndarray) -> np.ndarray:
        return _in_pieces(lambda part: session.run(None, {input_name: part})[0], pixel_values, max_run)

    pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="fer_hf-onnx") if threads > 1 else None

    def run(pixel_values: np.ndarray) -> np.ndarray:
        # At least MIN_SPLIT faces per run: tiny runs cost more in per-run overhead than parallelism gains.
        parts = np.array_split(pixel_values, max(1, min(threads, len(pixel_values) // MIN_SPLIT)))
        if pool is None or len(parts) < 2:
            return run_one(pixel_values)
        others = [pool.submit(run_one, part) for part in parts[1:]]
        return np.concatenate([run_one(parts[0]), *(future.result() for future in others)])

    return FerClassifier(config, data_config, run, backend=f"onnxruntime ({session.get_providers()[0]}, "
                         f"{threads} thread{'s' if threads > 1 else ''})", streams=threads, run_whole=run_one,
                         device="cpu" if on_cpu else session.get_providers()[0])


def _check_same_model(path: Path, model_dir: str | os.PathLike, metadata: dict) -> None:
    """`--model DIR --onnx FILE`: FILE runs, with its own config, so DIR only names it in reports. Refused where
    FILE was exported from other weights (a report would name the wrong model); said where that cannot be told."""
    from fer_hf.hashing import weights_sha256

    recorded = metadata.get(ONNX_WEIGHTS_KEY)
    if recorded is None:
        logger.warning("%s embeds its own config and runs as it is; whether it was exported from %s cannot be "
                       "checked (it was exported before fer_hf recorded the weights' digest).", path, model_dir)
    elif recorded != weights_sha256(model_dir):
        raise ValueError(f"{path} was not exported from {model_dir} (its weights differ); pass --onnx alone to run "
                         f"the export, --model alone to run the folder, or export the folder again "
                         f"(`python -m fer_hf.export {model_dir} --onnx {path}`).")


def view_logits(
    classifier: FerClassifier, faces: Iterable[Image.Image], tta: str = "none", batch_size: int = 64
) -> np.ndarray:
    """Logits of every view of every face: (N, V, num_labels). Faces are batched; views go in the same batch. With
    more than one batch, the next batch's faces are prepared in a background thread while the model runs."""
    per_face = VIEWS_PER_FACE[check_tta(tta)]
    faces_per_batch = max(1, batch_size // per_face)
    batches = chunks(faces, faces_per_batch)
    if isinstance(faces, Sequence) and len(faces) <= faces_per_batch:
        prepared = (classifier.preprocess.prepare(batch, tta) for batch in batches)  # one batch: no thread to start
    else:
        prepared = read_ahead(lambda batch: classifier.preprocess.prepare(batch, tta), batches, depth=2)
    out = [prepared_logits(classifier, ready, tta) for ready in prepared]
    if not out:
        return np.zeros((0, per_face, len(classifier.label_names)), np.float32)
    return np.concatenate(out)


def prepared_logits(classifier: FerClassifier, prepared: np.ndarray, tta: str = "none", whole: bool = False
                    ) -> np.ndarray:
    """Logits (N, V, num_labels) of faces already through `classifier.preprocess.prepare` (`whole`: see `logits`)."""
    views = classifier.preprocess.finish(prepared, tta)  # (N, V, C, H, W)
    logits = classifier.logits(views.reshape(-1, *views.shape[2:]), whole)
    return logits.reshape(len(prepared), views.shape[1], -1)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def ensemble_probabilities(
    classifiers: Sequence[FerClassifier], images: Iterable[Image.Image], tta: str = "none", batch_size: int = 128,
    progress: str | None = None,
) -> np.ndarray:
    """Class probabilities (N, num_labels) as `evaluate_model` scores them: each model's logits averaged over its TTA
    views, then the models' probabilities averaged. `progress`: show a progress bar per model with this title."""
    from tqdm.auto import tqdm

    images = list(images)
    probabilities = []
    for i, classifier in enumerate(classifiers, 1):
        shown = tqdm(images, desc=f"{progress} ({i}/{len(classifiers)})", unit="face", disable=progress is None)
        probabilities.append(softmax(view_logits(classifier, shown, tta, batch_size).mean(axis=1)))
    return np.mean(probabilities, axis=0)


def evaluate_model(
    classifiers: FerClassifier | Sequence[FerClassifier], images, labels, tta: str = "none", batch_size: int = 128
) -> dict[str, dict]:
    """Reports keyed `plain` and, when `tta` is not none, by the TTA mode; each as `classification_report` returns.

    Each model's logits are averaged over its TTA views; several models (an ensemble) average their class
    probabilities. With one model the predictions are its logits' argmax either way."""
    from fer_hf.metrics import classification_report

    classifiers = [classifiers] if isinstance(classifiers, FerClassifier) else list(classifiers)
    images, labels = list(images), np.asarray(labels)
    augmented = None
    if check_tta(tta) == "hflip":  # the first of the two views is the plain image: one pass gives both figures
        logits = [view_logits(classifier, images, "hflip", batch_size) for classifier in classifiers]
        plain = np.mean([softmax(each[:, 0]) for each in logits], axis=0)
        augmented = np.mean([softmax(each.mean(axis=1)) for each in logits], axis=0)
    else:
        plain = ensemble_probabilities(classifiers, images, "none", batch_size)
        if tta == "tencrop":
            augmented = ensemble_probabilities(classifiers, images, tta, batch_size)
    names = classifiers[0].label_names
    reports = {"plain": classification_report(plain.argmax(-1), labels, names)}
    if augmented is not None:
        reports[tta] = classification_report(augmented.argmax(-1), labels, names)
    return reports
