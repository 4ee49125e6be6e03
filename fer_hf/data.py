"""Load FER-2013 from any of its usual forms into one `datasets.DatasetDict`.

Every source ends up with the splits `train` (Training), `validation` (PublicTest) and `test` (PrivateTest) and the
features of `fer_hf.labels.fer_features()`. Sources are told apart by what the argument is:

1. the Kaggle `fer2013.csv` (columns emotion, pixels, Usage);
2. the Kaggle image-folder layout (`train/<class>/*.jpg`, `test/<class>/*.jpg`);
3. the numpy archive `fer2013.npz` (the file, or the folder that holds it);
4. a Hub dataset id, through `datasets.load_dataset`;
5. `synthetic`: procedurally drawn faces (`fer_hf.synthetic`).

A CSV, archive or folder is parsed once and kept in the datasets cache, keyed by the source's path, size and modification
time, so later loads memory-map Arrow files instead of parsing again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, config, load_dataset, load_from_disk
from PIL import Image, UnidentifiedImageError

from fer_hf.labels import IMAGE_SIZE, LABEL_NAMES, SPLITS, USAGE_TO_SPLIT, fer_features

logger = logging.getLogger(__name__)

NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE
CSV_COLUMNS = ("emotion", "pixels", "Usage")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm"}
# Bump when parsing changes, so stale cache entries are never reused.
CACHE_VERSION = "1"


class FerDataError(ValueError):
    """Bad input data: the message names the file and the row or item, and says how to fix it."""


def load_fer2013(
    source: str = "synthetic",
    *,
    validation_fraction: float = 0.1,
    seed: int = 0,
    skip_bad_rows: bool = False,
    synthetic_train_size: int = 3000,
    synthetic_eval_size: int = 600,
    cache_dir: str | os.PathLike | None = None,
) -> DatasetDict:
    """Load FER-2013 (or the synthetic stand-in) with splits train / validation / test.

    Args:
        source: a path to `fer2013.csv`, `fer2013.npz`, a folder holding either, a Kaggle image folder, a Hub
            dataset id, or `synthetic`.
        validation_fraction: share of train held out (seeded, stratified) where the source has no validation split.
        seed: seed of that hold-out and of the synthetic faces.
        skip_bad_rows: skip malformed CSV rows / unreadable images (their count is logged) instead of raising.
        synthetic_train_size: training images drawn for `synthetic`.
        synthetic_eval_size: validation and test images (each) drawn for `synthetic`.
        cache_dir: where parsed CSVs and folders are cached; the datasets cache by default.
    """
    if source == "synthetic":
        return _load_synthetic(synthetic_train_size, synthetic_eval_size, seed)
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return _cached(path, "csv", skip_bad_rows, cache_dir, lambda: _parse_csv(path, skip_bad_rows))
        if path.suffix.lower() == ".npz":
            return _cached(path, "npz", skip_bad_rows, cache_dir, lambda: _from_arrays(*_read_npz(path)))
        raise FerDataError(f"{path}: unsupported file type {path.suffix!r}; give fer2013.csv, fer2013.npz or a folder.")
    if path.is_dir():
        for name in ("fer2013.npz", "fer2013.csv"):
            if (path / name).is_file():
                return load_fer2013(str(path / name), validation_fraction=validation_fraction, seed=seed,
                                    skip_bad_rows=skip_bad_rows, cache_dir=cache_dir)
        if (path / "train").is_dir():
            key = f"folder-{validation_fraction}-{seed}"
            return _cached(path, key, skip_bad_rows, cache_dir,
                           lambda: _parse_folder(path, validation_fraction, seed, skip_bad_rows))
        raise FerDataError(
            f"{path}: folder has neither fer2013.csv, fer2013.npz nor a train/ subfolder "
            "(expected the Kaggle layout train/<class>/*.jpg and test/<class>/*.jpg)."
        )
    if _looks_like_path(source):
        raise FileNotFoundError(f"{source}: no such file or folder (expected fer2013.csv, fer2013.npz or a folder).")
    return _load_hub(source, validation_fraction, seed)


# ----------------------------------------------------------------------------------------------------- sources


def _load_synthetic(train_size: int, eval_size: int, seed: int) -> DatasetDict:
    from fer_hf.synthetic import make_faces

    # Distinct seeds per split so no face is shared between train and the evaluation splits.
    sizes = {"train": train_size, "validation": eval_size, "test": eval_size}
    parts = {}
    for offset, (split, size) in enumerate(sizes.items()):
        pixels, labels = make_faces(size, seed=seed * 3 + offset)
        parts[split] = (pixels, labels)
    return DatasetDict({split: _to_dataset(p, y) for split, (p, y) in parts.items()})


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise FerDataError(f"{path}: not a readable numpy archive ({err}).") from err
    with archive:
        missing = {"pixels", "labels", "usage"} - set(archive.files)
        if missing:
            raise FerDataError(f"{path}: archive lacks the arrays {sorted(missing)} (has {sorted(archive.files)}).")
        pixels, labels, usage = archive["pixels"], archive["labels"].astype(np.int64), archive["usage"]
    if pixels.ndim != 3 or pixels.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or pixels.dtype != np.uint8:
        raise FerDataError(f"{path}: 'pixels' must be uint8 (N,48,48), got {pixels.dtype} {pixels.shape}.")
    _check_labels(labels, path)
    unknown = set(np.unique(usage)) - set(USAGE_TO_SPLIT)
    if unknown:
        raise FerDataError(f"{path}: unknown usage values {sorted(unknown)}; expected {sorted(USAGE_TO_SPLIT)}.")
    return pixels, labels, usage


def _parse_csv(path: Path, skip_bad_rows: bool) -> DatasetDict:
    import pandas as pd

    if path.stat().st_size == 0:
        raise FerDataError(f"{path}: the file is empty; expected fer2013.csv with columns {', '.join(CSV_COLUMNS)}.")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as err:
        raise FerDataError(f"{path}: the file is empty or has no header ({err}).") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise FerDataError(f"{path}: not a readable CSV ({err}).") from err
    frame.columns = [c.strip() for c in frame.columns]
    missing = [c for c in CSV_COLUMNS if c not in frame.columns]
    if missing:
        raise FerDataError(
            f"{path}: missing column(s) {missing}; found {list(frame.columns)}. "
            "The Kaggle fer2013.csv has the header emotion,pixels,Usage."
        )
    if frame.empty:
        raise FerDataError(f"{path}: the CSV has a header but no rows.")

    pixels = _parse_pixel_strings(frame["pixels"].tolist())
    bad: dict[int, str] = {}
    if pixels is None:  # the fast path found a malformed row somewhere: find each one and say what is wrong
        pixels = np.zeros((len(frame), NUM_PIXELS), np.uint8)
        for i, text in enumerate(frame["pixels"]):
            row, problem = _parse_one_pixel_string(text)
            if problem:
                bad[i] = problem
            else:
                pixels[i] = row
    labels = np.full(len(frame), -1, np.int64)
    for i, text in enumerate(frame["emotion"]):
        try:
            labels[i] = int(text)
        except ValueError:
            pass
        if not 0 <= labels[i] < len(LABEL_NAMES):
            bad.setdefault(i, f"emotion {text!r} is not an integer label in 0-{len(LABEL_NAMES) - 1}")
    usage = frame["Usage"].str.strip().to_numpy()
    for i in np.flatnonzero(~np.isin(usage, list(USAGE_TO_SPLIT))):
        bad.setdefault(int(i), f"Usage {usage[i]!r} is not one of {', '.join(USAGE_TO_SPLIT)}")

    if bad:
        # Row numbers are 1-based file lines (the header is line 1) so they can be found in an editor.
        first = sorted(bad)[:5]
        described = "; ".join(f"line {i + 2}: {bad[i]}" for i in first)
        if not skip_bad_rows:
            raise FerDataError(
                f"{path}: {len(bad)} malformed row(s) — {described}"
                f"{' …' if len(bad) > len(first) else ''}. Fix the file, or pass --skip_bad_rows to drop such rows."
            )
        logger.warning("%s: skipped %d malformed row(s) — %s", path, len(bad), described)
        keep = np.setdiff1d(np.arange(len(frame)), np.fromiter(bad, int))
        pixels, labels, usage = pixels[keep], labels[keep], usage[keep]
    return _from_arrays(pixels.reshape(-1, IMAGE_SIZE, IMAGE_SIZE), labels, usage)


def _parse_pixel_strings(texts: list[str]) -> np.ndarray | None:
    """Parse all pixel strings in one vectorised pass; None if any row is malformed (then parse row by row)."""
    joined = "\n".join(text.strip() for text in texts)
    raw = np.frombuffer(joined.encode("ascii", errors="replace"), dtype=np.uint8)
    # Count single spaces per row from the bytes: cheap, and any odd spacing sends the row to the careful path.
    row_starts = np.concatenate([[0], np.flatnonzero(raw == ord("\n")) + 1])
    spaces = np.add.reduceat((raw == ord(" ")).astype(np.int32), row_starts) if raw.size else np.zeros(1, np.int32)
    if len(row_starts) != len(texts) or np.any(spaces != NUM_PIXELS - 1):
        return None
    if np.any((raw != ord(" ")) & (raw != ord("\n")) & ((raw < ord("0")) | (raw > ord("9")))):
        return None  # a sign, a decimal point or a letter somewhere
    values = np.fromstring(joined, dtype=np.int64, sep=" ")  # text mode; numpy's fastest integer parser
    if values.size != len(texts) * NUM_PIXELS or values.max(initial=0) > 255:
        return None
    return values.astype(np.uint8).reshape(len(texts), NUM_PIXELS)


def _parse_one_pixel_string(text: str) -> tuple[np.ndarray | None, str | None]:
    tokens = text.split()
    if len(tokens) != NUM_PIXELS:
        return None, f"pixels has {len(tokens)} values, expected {NUM_PIXELS} (48x48) space-separated integers"
    try:
        values = np.array(tokens, dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        return None, f"pixels has a non-integer value {bad!r}"
    if values.min() < 0 or values.max() > 255:
        return None, f"pixels has a value outside 0-255 ({values.min()}..{values.max()})"
    return values.astype(np.uint8), None


def _parse_folder(root: Path, validation_fraction: float, seed: int, skip_bad_rows: bool) -> DatasetDict:
    """The Kaggle image-folder layout: train/<class>/*.jpg and test/<class>/*.jpg (optionally validation/)."""
    arrays: dict[str, tuple[list[np.ndarray], list[int]]] = {split: ([], []) for split in SPLITS}
    skipped: list[str] = []
    test_has_usage_prefixes = True
    for top in ("train", "validation", "val", "test"):
        folder = root / top
        if not folder.is_dir():
            continue
        for file, label in _labelled_files(folder):
            image = _read_image(file, skip_bad_rows)
            if image is None:
                skipped.append(str(file))
                continue
            if top == "train":
                split = "train"
            elif top in ("validation", "val"):
                split = "validation"
            elif file.name.startswith("PublicTest"):
                split = "validation"
            elif file.name.startswith("PrivateTest"):
                split = "test"
            else:
                test_has_usage_prefixes = False
                split = "test"
            arrays[split][0].append(image)
            arrays[split][1].append(label)
    if skipped:
        logger.warning("%s: skipped %d unreadable image(s), e.g. %s", root, len(skipped), skipped[:3])
    if not arrays["train"][0]:
        raise FerDataError(f"{root}/train: no images found in train/<class>/ (classes: {', '.join(LABEL_NAMES)}).")
    if not test_has_usage_prefixes and arrays["validation"][0] and not (root / "validation").is_dir():
        # Mixed naming: only some test files carry PublicTest_/PrivateTest_; treat the whole test/ folder as test.
        arrays["test"][0].extend(arrays["validation"][0])
        arrays["test"][1].extend(arrays["validation"][1])
        arrays["validation"] = ([], [])
    splits = {s: _to_dataset(np.stack(p), np.array(y, np.int64)) for s, (p, y) in arrays.items() if p}
    if "validation" not in splits:
        logger.warning(
            "%s: no validation split (test/ file names do not start with PublicTest_/PrivateTest_); holding out a "
            "seeded, stratified %.0f%% of train (seed %d) as validation.", root, 100 * validation_fraction, seed,
        )
        held = splits["train"].train_test_split(test_size=validation_fraction, seed=seed, stratify_by_column="label")
        splits["train"], splits["validation"] = held["train"], held["test"]
    if "test" not in splits:
        raise FerDataError(f"{root}/test: no images found in test/<class>/.")
    return DatasetDict({s: splits[s] for s in SPLITS})


def _labelled_files(folder: Path) -> Iterable[tuple[Path, int]]:
    names = {name: i for i, name in enumerate(LABEL_NAMES)}
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = names.get(class_dir.name.lower())
        if label is None:
            raise FerDataError(
                f"{class_dir}: unknown class folder {class_dir.name!r}; expected one of {', '.join(LABEL_NAMES)}."
            )
        for file in sorted(class_dir.iterdir()):
            if file.is_file() and not file.name.startswith("."):
                yield file, label


def _read_image(file: Path, skip_bad_rows: bool) -> np.ndarray | None:
    try:
        with Image.open(file) as image:
            image.load()
            gray = image.convert("L")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        if skip_bad_rows:
            return None
        raise FerDataError(
            f"{file}: not a readable image ({err}). Remove it, or pass --skip_bad_rows to skip unreadable files."
        ) from err
    if gray.size != (IMAGE_SIZE, IMAGE_SIZE):
        gray = gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    return np.asarray(gray, dtype=np.uint8)


def _load_hub(dataset_id: str, validation_fraction: float, seed: int) -> DatasetDict:
    try:
        raw = load_dataset(dataset_id)
    except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, DatasetNotFoundError…)
        raise ConnectionError(
            f"Could not load the Hub dataset {dataset_id!r}: {type(err).__name__}: {err}. Without network access, "
            "give a local fer2013.csv, fer2013.npz or Kaggle image folder instead (or `synthetic`)."
        ) from err
    return _normalise_hub(raw, dataset_id, validation_fraction, seed)


def _normalise_hub(raw: DatasetDict, dataset_id: str, validation_fraction: float, seed: int) -> DatasetDict:
    """Map a Hub copy of FER-2013 onto our splits, column names and label order."""
    from datasets import ClassLabel
    from datasets import Image as ImageFeature

    first = next(iter(raw.values()))
    image_col = next((c for c, f in first.features.items() if isinstance(f, ImageFeature)), None)
    label_col = next((c for c, f in first.features.items() if isinstance(f, ClassLabel)), None)
    if image_col is None or label_col is None:
        raise FerDataError(f"{dataset_id}: needs an Image column and a ClassLabel column; has {first.features}.")
    hub_names = [n.lower() for n in first.features[label_col].names]
    if sorted(hub_names) != sorted(LABEL_NAMES):
        raise FerDataError(f"{dataset_id}: label names {hub_names} are not FER-2013's {list(LABEL_NAMES)}.")
    remap = np.array([LABEL_NAMES.index(n) for n in hub_names])
    aliases = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
               "val": "validation", "publictest": "validation", "test": "test", "privatetest": "test"}
    splits = {}
    for name, part in raw.items():
        target = aliases.get(name.lower())
        if target is None:
            logger.warning("%s: ignoring split %r", dataset_id, name)
            continue
        part = part.select_columns([image_col, label_col]).rename_columns({image_col: "image", label_col: "label"})
        part = part.map(lambda b: {"label": remap[np.asarray(b["label"])].tolist()}, batched=True,
                        features=fer_features())
        splits[target] = part
    if "train" not in splits or "test" not in splits:
        raise FerDataError(f"{dataset_id}: needs train and test splits, has {list(raw)}.")
    if "validation" not in splits:
        logger.warning("%s: no validation split; holding out a seeded, stratified %.0f%% of train (seed %d).",
                       dataset_id, 100 * validation_fraction, seed)
        held = splits["train"].train_test_split(test_size=validation_fraction, seed=seed, stratify_by_column="label")
        splits["train"], splits["validation"] = held["train"], held["test"]
    return DatasetDict({s: splits[s] for s in SPLITS})


# ----------------------------------------------------------------------------------------------------- helpers


def _from_arrays(pixels: np.ndarray, labels: np.ndarray, usage: np.ndarray) -> DatasetDict:
    splits = {}
    for usage_name, split in USAGE_TO_SPLIT.items():
        rows = np.flatnonzero(usage == usage_name)
        if len(rows) == 0:
            raise FerDataError(f"no rows with Usage {usage_name!r} ({split} split); every split must be present.")
        splits[split] = _to_dataset(pixels[rows], labels[rows])
    return DatasetDict(splits)


def _to_dataset(pixels: np.ndarray, labels: np.ndarray) -> Dataset:
    """Store (N,48,48) uint8 faces in a datasets `Image` column as binary PGM (P5): lossless, PIL-readable, and
    written and decoded several times faster than PNG (the bytes are the pixels behind a 13-byte header)."""
    header = f"P5\n{IMAGE_SIZE} {IMAGE_SIZE}\n255\n".encode()
    faces = np.ascontiguousarray(pixels, dtype=np.uint8)
    return Dataset.from_dict(
        {"image": [{"bytes": header + face.tobytes(), "path": None} for face in faces],
         "label": labels.astype(np.int64).tolist()},
        features=fer_features(),
    )


def _check_labels(labels: np.ndarray, path: Path) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= len(LABEL_NAMES)))
    if len(bad):
        raise FerDataError(f"{path}: item {bad[0]} has label {labels[bad[0]]}, outside 0-{len(LABEL_NAMES) - 1}.")


def _looks_like_path(source: str) -> bool:
    # A Hub id is `name` or `owner/name` without a file suffix; anything else that does not exist is a missing path.
    is_hub_id = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source) is not None
    return not is_hub_id or Path(source).suffix.lower() in {".csv", ".npz", *IMAGE_SUFFIXES}


def _cached(source: Path, kind: str, skip_bad_rows: bool, cache_dir, build) -> DatasetDict:
    """Parse `source` once; later calls load the Arrow copy from the datasets cache (memory-mapped, seconds)."""
    stat = source.stat()
    newest = stat.st_mtime_ns
    if source.is_dir():  # a folder changes when any image in it changes
        newest = max([newest, *(p.stat().st_mtime_ns for p in source.rglob("*"))])
    key = f"{CACHE_VERSION}|{kind}|{source.resolve()}|{stat.st_size}|{newest}|{skip_bad_rows}"
    root = Path(cache_dir or config.HF_DATASETS_CACHE) / "fer_hf"
    target = root / f"{kind.split('-')[0]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if (target / "dataset_dict.json").is_file():
        logger.info("Loading %s from the cache %s", source, target)
        return load_from_disk(str(target))
    logger.info("Parsing %s (once; cached at %s)", source, target)
    dataset = build()
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    dataset.save_to_disk(str(tmp))
    try:
        tmp.rename(target)  # atomic: a crash mid-write never leaves a half-written cache entry in place
    except OSError:  # another process won the race; use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return load_from_disk(str(target))
