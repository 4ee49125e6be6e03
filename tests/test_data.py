"""Loader tests: every source kind on small fixtures made here, every bad-input case, caching, the real archive."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest
from PIL import Image

from conftest import require_fer2013, require_module
from fer_hf.data import load
from fer_hf.data.load import FerDataError, decode_faces, load_fer2013
from fer_hf.labels import LABEL_NAMES, SPLITS, USAGE_TO_SPLIT

USAGES = ["Training"] * 14 + ["PublicTest"] * 7 + ["PrivateTest"] * 7


def make_faces(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 48, 48), dtype=np.uint8), np.arange(n) % 7


def write_csv(path, pixels, labels, usages, header="emotion,pixels,Usage"):
    rows = [header] + [
        f"{label},{' '.join(map(str, face.ravel()))},{usage}"
        for face, label, usage in zip(pixels, labels, usages, strict=True)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def csv_file(tmp_path):
    pixels, labels = make_faces(len(USAGES))
    return write_csv(tmp_path / "fer2013.csv", pixels, labels, USAGES), pixels, labels


def check_schema(dataset):
    assert list(dataset) == list(SPLITS)
    for part in dataset.values():
        assert part.features["label"].names == list(LABEL_NAMES)
        image = part[0]["image"]
        assert image.mode == "L" and image.size == (48, 48)


def test_csv_splits_pixels_and_labels(csv_file, tmp_path):
    path, pixels, labels = csv_file
    dataset = load_fer2013(str(path), cache_dir=tmp_path / "cache")
    check_schema(dataset)
    assert {s: len(p) for s, p in dataset.items()} == {"train": 14, "validation": 7, "test": 7}
    # Row order is kept within each split; pixels round-trip exactly (lossless storage).
    assert np.array_equal(np.asarray(dataset["validation"][2]["image"]), pixels[16])
    assert dataset["test"][6]["label"] == labels[27]
    assert dataset["train"].features["label"].int2str(dataset["train"][3]["label"]) == LABEL_NAMES[3]


def test_csv_is_cached_and_cache_follows_file_changes(csv_file, tmp_path):
    path, pixels, labels = csv_file
    cache = tmp_path / "cache"
    first = load_fer2013(str(path), cache_dir=cache)
    entries = list(cache.glob("fer_hf/*"))
    second = load_fer2013(str(path), cache_dir=cache)
    assert list(cache.glob("fer_hf/*")) == entries and len(entries) == 1
    assert second["train"].cache_files and second["train"][0]["label"] == first["train"][0]["label"]
    # Editing the file invalidates the entry: a changed label must show up, never a stale copy.
    time.sleep(0.01)
    write_csv(path, pixels, (labels + 1) % 7, USAGES)
    third = load_fer2013(str(path), cache_dir=cache)
    assert third["train"][0]["label"] == (labels[0] + 1) % 7


def test_cache_sees_a_rewrite_that_keeps_size_and_mtime(csv_file, tmp_path):
    """`cp -p`, `rsync -t` or os.utime restore the mtime of a rewritten file; the cache must not serve the old copy."""
    path, pixels, labels = csv_file
    cache = tmp_path / "cache"
    before = path.stat()
    assert load_fer2013(str(path), cache_dir=cache)["train"][0]["label"] == labels[0]
    time.sleep(0.05)  # past the kernel's coarse timestamp tick, so the change time surely moves
    write_csv(path, pixels, (labels + 1) % 7, USAGES)  # one-digit labels: the same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    reloaded = load_fer2013(str(path), cache_dir=cache)
    assert list(reloaded["train"]["label"]) == list((labels[:14] + 1) % 7)


def test_csv_without_some_usages_loads_only_for_the_splits_asked_for(tmp_path):
    """A file of PrivateTest rows alone serves an evaluation on test; whoever needs another split (training needs
    all three) is told which Usage is missing, also when the partial file is already in the cache."""
    pixels, labels = make_faces(7)
    path = write_csv(tmp_path / "private.csv", pixels, labels, ["PrivateTest"] * 7)
    cache = tmp_path / "cache"
    dataset = load_fer2013(str(path), cache_dir=cache, splits=("test",))
    assert list(dataset) == ["test"] and list(dataset["test"]["label"]) == list(labels)
    assert np.array_equal(np.asarray(dataset["test"][4]["image"]), pixels[4])
    with pytest.raises(FerDataError, match=r"private\.csv: no rows with Usage 'PublicTest' \(validation split\).*"
                                           r"holds only PrivateTest rows"):
        load_fer2013(str(path), cache_dir=cache, splits=("validation",))
    with pytest.raises(FerDataError, match=r"no rows with Usage 'Training', 'PublicTest' \(train, validation split"):
        load_fer2013(str(path), cache_dir=cache)  # the default: every split
    with pytest.raises(FerDataError, match="no rows with Usage 'Training'"):
        load_fer2013(str(path), cache_dir=tmp_path / "fresh")  # not cached yet: the parser checks it too
    with pytest.raises(ValueError, match="unknown split"):
        load_fer2013(str(path), cache_dir=cache, splits=("PrivateTest",))


def test_npz_file_and_folder(tmp_path):
    pixels, labels = make_faces(len(USAGES))
    np.savez_compressed(tmp_path / "fer2013.npz", pixels=pixels, labels=labels.astype(np.int8),
                        usage=np.array(USAGES))
    for source in (tmp_path / "fer2013.npz", tmp_path):
        dataset = load_fer2013(str(source), cache_dir=tmp_path / "cache")
        check_schema(dataset)
        assert np.array_equal(np.asarray(dataset["test"][0]["image"]), pixels[21])


# ------------------------------------------------------------------------------------------------- the fast CSV reader
# The plain Kaggle layout is parsed in bulk (`_read_csv_fast`); anything else, or any bad row, goes to the careful
# row-by-row reader. Both must give the same dataset.


def loaded(source, cache) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    dataset = load_fer2013(str(source), cache_dir=cache)
    return {split: (decode_faces(part), np.asarray(part["label"])) for split, part in dataset.items()}


def expected(pixels, labels) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    usages = np.array(USAGES)
    return {split: (pixels[usages == usage], labels[usages == usage]) for usage, split in USAGE_TO_SPLIT.items()}


def assert_same(got, want):
    assert got.keys() == want.keys()
    for split in want:
        assert np.array_equal(got[split][0], want[split][0]), split
        assert np.array_equal(got[split][1], want[split][1]), split


def test_fast_csv_reader_reads_the_kaggle_layout(csv_file, tmp_path):
    path, pixels, labels = csv_file
    assert {0, 9, 10, 255} <= set(pixels.ravel().tolist())  # one, two and three digits, both ends of the range
    fast = load._read_csv_fast(path)
    assert all(np.array_equal(a, b) for a, b in zip(fast, (pixels, labels, np.array(USAGES)), strict=True))
    # Blocks shorter than a line, and blocks that end mid-line, read the same.
    for block_bytes in (1000, 20_000):
        small = load._read_csv_fast(path, block_bytes=block_bytes)
        assert all(np.array_equal(a, b) for a, b in zip(small, fast, strict=True))
    assert_same(loaded(path, tmp_path / "cache"), expected(pixels, labels))


def test_fast_and_careful_csv_readers_agree(csv_file, tmp_path, monkeypatch):
    path = csv_file[0]
    fast = loaded(path, tmp_path / "fast")
    monkeypatch.setattr(load, "_read_csv_fast", lambda *args, **kwargs: None)
    assert_same(loaded(path, tmp_path / "careful"), fast)


@pytest.mark.parametrize("variant", ["crlf", "quoted", "spaced_header", "no_final_newline", "trailing_space"])
def test_other_csv_layouts_go_to_the_careful_reader(csv_file, tmp_path, variant):
    path, pixels, labels = csv_file
    text = path.read_text()
    lines = text.splitlines()
    if variant == "crlf":
        text = "\r\n".join(lines) + "\r\n"
    elif variant == "quoted":
        text = "\n".join([lines[0], *(f'{x.split(",")[0]},"{x.split(",")[1]}",{x.split(",")[2]}' for x in lines[1:])])
    elif variant == "spaced_header":
        text = text.replace("emotion,pixels,Usage", "emotion, pixels, Usage", 1)
    elif variant == "no_final_newline":
        text = text.rstrip("\n")
    elif variant == "trailing_space":
        text = text.replace(",Training\n", " ,Training\n")
    path.write_text(text)
    fast = load._read_csv_fast(path)
    if variant in ("spaced_header", "no_final_newline"):
        assert fast is not None  # still the plain layout
    else:
        assert fast is None
    assert_same(loaded(path, tmp_path / "cache"), expected(pixels, labels))


def test_fast_csv_reader_leaves_bad_rows_to_the_careful_reader(csv_file, tmp_path):
    path = csv_file[0]
    lines = path.read_text().splitlines()
    label, pixels, usage = lines[3].split(",")
    values = pixels.split(" ")
    values[5] = "1000"
    lines[3] = f"{label},{' '.join(values)},{usage}"
    path.write_text("\n".join(lines) + "\n")
    assert load._read_csv_fast(path) is None
    with pytest.raises(FerDataError, match=r"line 4: pixels has a value outside 0-255"):
        load_fer2013(str(path), cache_dir=tmp_path / "cache")

def write_folder(root, layout):
    """layout: {relative_path: (face, ext)}; returns the faces by path."""
    for rel, face in layout.items():
        file = root / rel
        file.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(face).save(file)


def test_image_folder_with_public_private_prefixes(tmp_path):
    pixels, _ = make_faces(21)
    layout = {}
    for i, name in enumerate(LABEL_NAMES):
        layout[f"train/{name}/Training_{i}.png"] = pixels[i]
        layout[f"test/{name}/PublicTest_{i}.png"] = pixels[7 + i]
        layout[f"test/{name}/PrivateTest_{i}.png"] = pixels[14 + i]
    write_folder(tmp_path / "fer", layout)
    dataset = load_fer2013(str(tmp_path / "fer"), cache_dir=tmp_path / "cache")
    check_schema(dataset)
    assert {s: len(p) for s, p in dataset.items()} == {"train": 7, "validation": 7, "test": 7}
    happy = [row for row in dataset["test"] if row["label"] == LABEL_NAMES.index("happy")]
    assert np.array_equal(np.asarray(happy[0]["image"]), pixels[14 + 3])


def test_image_folder_without_prefixes_holds_out_stratified_validation(tmp_path, caplog):
    rng = np.random.default_rng(1)
    layout = {f"train/{name.capitalize()}/{k}.jpg": rng.integers(0, 256, (48, 48), np.uint8)
              for name in LABEL_NAMES for k in range(10)}
    layout |= {f"test/{name}/{k}.jpg": rng.integers(0, 256, (48, 48), np.uint8)
               for name in LABEL_NAMES for k in range(2)}
    # A larger RGB image must come out as 48x48 mode L too.
    layout["test/happy/big.jpg"] = rng.integers(0, 256, (96, 96, 3), np.uint8)
    write_folder(tmp_path / "kaggle", layout)
    with caplog.at_level(logging.WARNING, logger="fer_hf"):
        dataset = load_fer2013(str(tmp_path / "kaggle"), validation_fraction=0.2, seed=3,
                               cache_dir=tmp_path / "cache")
    check_schema(dataset)
    assert "stratified" in caplog.text and "validation" in caplog.text
    assert len(dataset["validation"]) == 14 and len(dataset["train"]) == 56 and len(dataset["test"]) == 15
    assert sorted(dataset["validation"]["label"]) == sorted(list(range(7)) * 2)  # stratified: 2 per class


def test_image_folder_without_prefixes_says_its_test_split_is_all_of_test(tmp_path, caplog):
    """README: test is PrivateTest. A Kaggle test/ without PublicTest_/PrivateTest_ names holds both, and every load
    (the cached one too) says so; the split carries it for evaluate to record."""
    pixels, _ = make_faces(21)
    layout = {f"train/{name}/{k}.png": pixels[2 * i + k] for i, name in enumerate(LABEL_NAMES) for k in range(2)}
    layout |= {f"test/{name}/{i}.png": pixels[14 + i] for i, name in enumerate(LABEL_NAMES)}
    write_folder(tmp_path / "kaggle", layout)
    for attempt in ("parsed", "cached"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fer_hf"):
            dataset = load_fer2013(str(tmp_path / "kaggle"), validation_fraction=0.5, cache_dir=tmp_path / "cache")
        warned = [r.getMessage() for r in caplog.records if load.MIXED_TEST_SPLIT in r.getMessage()]
        assert len(warned) == 1, (attempt, caplog.text)
        assert "7 images" in warned[0] and "PrivateTest alone" in warned[0]
        assert dataset["test"].info.description == load.MIXED_TEST_SPLIT
        assert dataset["test"].select(range(3)).info.description == load.MIXED_TEST_SPLIT  # --max_samples keeps it

    prefixed = {f"train/{name}/Training_{i}.png": pixels[i] for i, name in enumerate(LABEL_NAMES)}
    prefixed |= {f"test/{name}/{usage}_{i}.png": pixels[7 + i] for i, name in enumerate(LABEL_NAMES)
                 for usage in ("PublicTest", "PrivateTest")}
    write_folder(tmp_path / "named", prefixed)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fer_hf"):
        dataset = load_fer2013(str(tmp_path / "named"), cache_dir=tmp_path / "cache")
    assert load.MIXED_TEST_SPLIT not in caplog.text and dataset["test"].info.description != load.MIXED_TEST_SPLIT


def test_a_val_folder_stays_validation_beside_a_test_folder_of_mixed_names(tmp_path):
    # Only some test/ files named PublicTest_*: test/ is taken whole as test, but val/'s images never join it.
    pixels, _ = make_faces(28)
    layout = {f"train/{name}/{k}.png": pixels[2 * i + k] for i, name in enumerate(LABEL_NAMES) for k in range(2)}
    layout |= {f"val/{name}/v{i}.png": pixels[14 + i] for i, name in enumerate(LABEL_NAMES)}
    layout |= {f"test/{name}/{'PublicTest_' if i < 3 else ''}{i}.png": pixels[21 + i]
               for i, name in enumerate(LABEL_NAMES)}
    write_folder(tmp_path / "kaggle", layout)
    dataset = load_fer2013(str(tmp_path / "kaggle"), cache_dir=tmp_path / "cache")
    assert len(dataset["test"]) == 4 and len(dataset["validation"]) == 7 + 3


def test_synthetic_is_deterministic_and_sized():
    a = load_fer2013("synthetic", synthetic_train_size=70, synthetic_eval_size=14, seed=5)
    b = load_fer2013("synthetic", synthetic_train_size=70, synthetic_eval_size=14, seed=5)
    check_schema(a)
    assert {s: len(p) for s, p in a.items()} == {"train": 70, "validation": 14, "test": 14}
    assert np.array_equal(np.asarray(a["test"][3]["image"]), np.asarray(b["test"][3]["image"]))
    assert not np.array_equal(np.asarray(a["train"][0]["image"]), np.asarray(a["test"][0]["image"]))


def test_hub_id_offline_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so the id is not mistaken for a local folder
    with pytest.raises(ConnectionError, match="Could not load the Hub dataset 'someone/fer2013'.*local"):
        load_fer2013("someone/fer2013")


# ------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "source, message",
    [("missing/fer2013.csv", "no such file"), ("./nowhere", "no such file")],
)
def test_missing_paths(tmp_path, monkeypatch, source, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=message):
        load_fer2013(source)


def test_empty_and_headerless_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(FerDataError, match=r"empty\.csv: the file is empty"):
        load_fer2013(str(empty), cache_dir=tmp_path / "c")
    header_only = tmp_path / "header.csv"
    header_only.write_text("emotion,pixels,Usage\n")
    with pytest.raises(FerDataError, match="header but no rows"):
        load_fer2013(str(header_only), cache_dir=tmp_path / "c")


def test_missing_column_is_named(tmp_path):
    pixels, labels = make_faces(3)
    path = tmp_path / "train.csv"
    path.write_text("emotion,pixels\n" + "\n".join(f"{y},{' '.join(map(str, p.ravel()))}" for p, y in
                                                  zip(pixels, labels, strict=True)))
    with pytest.raises(FerDataError, match=r"train\.csv: missing column\(s\) \['Usage'\]"):
        load_fer2013(str(path), cache_dir=tmp_path / "c")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda row: row.replace(" 0 ", " 0 ", 1) + " 7", "has 2305 values, expected 2304"),
        (lambda row: " ".join(row.split()[:-1]), "has 2303 values"),
        (lambda row: "300 " + " ".join(row.split()[1:]), "outside 0-255"),
        (lambda row: "-1 " + " ".join(row.split()[1:]), "outside 0-255"),
        (lambda row: "abc " + " ".join(row.split()[1:]), "non-integer value 'abc'"),
        (lambda row: "1.5 " + " ".join(row.split()[1:]), "non-integer value '1.5'"),
    ],
)
def test_bad_pixel_string_names_the_line(tmp_path, mutate, message):
    pixels, labels = make_faces(len(USAGES))
    path = write_csv(tmp_path / "fer2013.csv", pixels, labels, USAGES)
    lines = path.read_text().splitlines()
    emotion, row, usage = lines[5].split(",")
    lines[5] = f"{emotion},{mutate(row)},{usage}"
    path.write_text("\n".join(lines))
    with pytest.raises(FerDataError, match=rf"fer2013\.csv: 1 malformed row\(s\) — line 6: .*{message}"):
        load_fer2013(str(path), cache_dir=tmp_path / "c")


@pytest.mark.parametrize(
    "field, value, message",
    [(0, "7", "emotion '7' is not an integer label in 0-6"), (0, "x", "emotion 'x'"),
     (2, "Validation", "Usage 'Validation' is not one of Training, PublicTest, PrivateTest")],
)
def test_bad_label_and_usage(tmp_path, field, value, message):
    pixels, labels = make_faces(len(USAGES))
    path = write_csv(tmp_path / "fer2013.csv", pixels, labels, USAGES)
    lines = path.read_text().splitlines()
    parts = lines[3].split(",")
    parts[field] = value
    lines[3] = ",".join(parts)
    path.write_text("\n".join(lines))
    with pytest.raises(FerDataError, match=f"line 4: {message}"):
        load_fer2013(str(path), cache_dir=tmp_path / "c")


def test_skip_bad_rows_drops_and_logs(tmp_path, caplog):
    pixels, labels = make_faces(len(USAGES))
    path = write_csv(tmp_path / "fer2013.csv", pixels, labels, USAGES)
    lines = path.read_text().splitlines()
    lines[2] = "9," + lines[2].split(",", 1)[1]
    lines[4] = lines[4].replace(" ", "  x ", 1)
    path.write_text("\n".join(lines))
    with caplog.at_level(logging.WARNING, logger="fer_hf"):
        dataset = load_fer2013(str(path), skip_bad_rows=True, cache_dir=tmp_path / "c")
    assert "skipped 2 malformed row(s)" in caplog.text
    assert len(dataset["train"]) == 12
    assert np.array_equal(np.asarray(dataset["train"][1]["image"]), pixels[2])  # rows 1 and 3 are gone


def test_unreadable_image_in_folder(tmp_path, caplog):
    faces, _ = make_faces(14)
    layout = {f"train/{name}/a.png": faces[i] for i, name in enumerate(LABEL_NAMES)}
    layout |= {f"test/{name}/b.png": faces[7 + i] for i, name in enumerate(LABEL_NAMES)}
    write_folder(tmp_path / "fer", layout)
    (tmp_path / "fer/train/sad/broken.jpg").write_bytes(b"not an image at all")
    (tmp_path / "fer/train/sad/empty.png").write_bytes(b"")
    with pytest.raises(FerDataError, match=r"train/sad/broken\.jpg: not a readable image.*--skip_bad_rows"):
        load_fer2013(str(tmp_path / "fer"), cache_dir=tmp_path / "c")
    with caplog.at_level(logging.WARNING, logger="fer_hf"):
        dataset = load_fer2013(str(tmp_path / "fer"), skip_bad_rows=True, cache_dir=tmp_path / "c")
    assert "skipped 2 unreadable image(s)" in caplog.text
    assert len(dataset["train"]) + len(dataset["validation"]) == 7


def test_unknown_class_folder_and_unknown_file_type(tmp_path):
    faces, _ = make_faces(2)
    write_folder(tmp_path / "fer", {"train/contempt/a.png": faces[0], "test/happy/b.png": faces[1]})
    with pytest.raises(FerDataError, match="unknown class folder 'contempt'"):
        load_fer2013(str(tmp_path / "fer"), cache_dir=tmp_path / "c")
    other = tmp_path / "data.parquet"
    other.write_bytes(b"x")
    with pytest.raises(FerDataError, match="unsupported file type '.parquet'"):
        load_fer2013(str(other))


def test_npz_with_bad_arrays(tmp_path):
    pixels, labels = make_faces(len(USAGES))
    np.savez(tmp_path / "a.npz", pixels=pixels, labels=labels + 5, usage=np.array(USAGES))
    with pytest.raises(FerDataError, match="outside 0-6"):
        load_fer2013(str(tmp_path / "a.npz"), cache_dir=tmp_path / "c")
    np.savez(tmp_path / "b.npz", pixels=pixels, labels=labels)
    with pytest.raises(FerDataError, match=r"lacks the arrays \['usage'\]"):
        load_fer2013(str(tmp_path / "b.npz"), cache_dir=tmp_path / "c")


# ------------------------------------------------------------------------------------------------- real data

EXPECTED_COUNTS = {  # the official FER-2013 release, per split and class (angry … neutral)
    "train": [3995, 436, 4097, 7215, 4830, 3171, 4965],
    "validation": [467, 56, 496, 895, 653, 415, 607],
    "test": [491, 55, 528, 879, 594, 416, 626],
}


def test_real_archive_split_sizes_and_class_counts(fer2013):
    assert {s: len(p) for s, p in fer2013.items()} == {"train": 28709, "validation": 3589, "test": 3589}
    for split, expected in EXPECTED_COUNTS.items():
        assert np.bincount(fer2013[split]["label"], minlength=7).tolist() == expected
    check_schema(fer2013)


def test_missing_archive_or_package_skips_locally_and_fails_in_ci(tmp_path, monkeypatch):
    monkeypatch.setenv("FER2013_PATH", str(tmp_path / "nowhere"))
    for ci, outcome in (("", pytest.skip.Exception), ("true", pytest.fail.Exception)):
        monkeypatch.setenv("CI", ci)
        with pytest.raises(outcome, match="real FER-2013 archive not found.*set FER2013_PATH"):
            require_fer2013()
        with pytest.raises(outcome, match="no_such_package is not importable.*pip install it"):
            require_module("no_such_package", "pip install it")
