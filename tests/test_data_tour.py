"""The dataset-tour helpers: near-duplicate search by difference hash and FER+ votes beside the original labels."""

from __future__ import annotations

import numpy as np
import pytest

from fer_hf.data.duplicates import HASH_SIZE, dhash, is_flat, nearest_twins
from fer_hf.data.ferplus import NO_VOTES, TIE, ferplus_majority, label_agreement, read_ferplus_votes
from fer_hf.data.load import FerDataError, decode_faces
from fer_hf.labels import FERPLUS_COLUMNS, FERPLUS_TO_LABEL, LABEL_NAMES, SPLITS


def _faces(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random 48x48 images (a blurred noise field), so that hashes of different images differ widely."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 6, 6)).astype(np.float32)
    return np.kron(coarse, np.ones((8, 8), np.float32)).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------- duplicates


def test_a_planted_copy_is_found_at_distance_zero_among_others():
    reference = _faces(500, seed=1)
    query = _faces(20, seed=2)
    query[7] = reference[123]
    query[11] = np.clip(reference[321].astype(int) + 12, 0, 255)  # brighter: the gradients' signs survive
    index, distance = nearest_twins(dhash(query), dhash(reference))
    assert (index[7], distance[7]) == (123, 0)
    assert (index[11], distance[11]) == (321, 0)
    others = np.delete(distance, [7, 11])
    assert others.min() > 4, "unrelated images should be many bits apart"


def test_chunking_does_not_change_the_answer():
    reference, query = dhash(_faces(300, seed=3)), dhash(_faces(70, seed=4))
    whole = nearest_twins(query, reference, chunk=1000)
    for got, expected in zip(nearest_twins(query, reference, chunk=7), whole, strict=True):
        np.testing.assert_array_equal(got, expected)
    brute = np.array([[bin(int(q) ^ int(r)).count("1") for r in reference] for q in query])
    np.testing.assert_array_equal(whole[1], brute.min(axis=1))


def test_hash_shape_and_flat_images():
    faces = _faces(4)
    faces[2] = 128
    hashes = dhash(faces)
    assert hashes.dtype == np.uint64 and hashes.shape == (4,)
    assert hashes[2] == 0  # no gradient anywhere: every bit 0
    assert is_flat(faces).tolist() == [False, False, True, False]
    index, distance = nearest_twins(hashes, hashes[:0])
    assert (index == -1).all() and (distance > HASH_SIZE * HASH_SIZE).all()


def test_real_privatetest_twins_are_the_same_pictures(fer2013):
    """On the real splits, a hash distance of 0 means the same photograph (pixel gap near 0)."""
    train, test = decode_faces(fer2013["train"]), decode_faces(fer2013["test"])
    index, distance = nearest_twins(dhash(test), dhash(train))
    twins = (distance == 0) & ~is_flat(test)
    assert 100 < twins.sum() < 1000  # FER-2013 is known to repeat faces across splits, but not most of them
    gap = np.abs(test[twins].astype(int) - train[index[twins]].astype(int)).mean(axis=(1, 2))
    assert np.median(gap) < 1.0


# ----------------------------------------------------------------------------------------------------- FER+

FERPLUS_HEADER = "Usage,Image name," + ",".join(FERPLUS_COLUMNS)


def _write_ferplus(path, rows):
    path.write_text(FERPLUS_HEADER + "\n" + "\n".join(rows) + "\n")
    return path


def test_ferplus_csv_is_read_per_split_in_row_order(tmp_path):
    path = _write_ferplus(tmp_path / "fer2013new.csv", [
        "Training,fer0000000.png,4,0,0,1,3,2,0,0,0,0",
        "PublicTest,fer0000001.png,0,10,0,0,0,0,0,0,0,0",
        "Training,,0,0,0,0,0,0,0,0,0,10",   # FER+ dropped this image: all votes for NF
        "PrivateTest,fer0000003.png,5,5,0,0,0,0,0,0,0,0",
        "Training,,0,0,0,0,0,0,0,0,0,0",    # no annotation at all
    ])
    votes = read_ferplus_votes(path)
    assert {split: len(v) for split, v in votes.items()} == {"train": 3, "validation": 1, "test": 1}
    assert votes["train"][0].tolist() == [4, 0, 0, 1, 3, 2, 0, 0, 0, 0]
    assert (votes["train"][2] == -1).all()
    assert ferplus_majority(votes["train"]).tolist() == ["neutral", "NF", NO_VOTES]
    assert ferplus_majority(votes["validation"]).tolist() == ["happiness"]
    assert ferplus_majority(votes["test"]).tolist() == [TIE]
    # a folder holding the file works as well
    assert read_ferplus_votes(tmp_path)["test"].tolist() == votes["test"].tolist()


@pytest.mark.parametrize("content, message", [
    ("Usage,Image name,neutral\nTraining,a.png,10\n", "columns"),
    (FERPLUS_HEADER + "\nTraining,a.png,1,2,x,0,0,0,0,0,0,0\n", "line 2"),
])
def test_bad_ferplus_files_are_named(tmp_path, content, message):
    path = tmp_path / "fer2013new.csv"
    path.write_text(content)
    with pytest.raises(FerDataError, match=message):
        read_ferplus_votes(path)


def test_missing_ferplus_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="microsoft/FERPlus"):
        read_ferplus_votes(tmp_path / "fer2013new.csv")
    with pytest.raises(FerDataError, match="microsoft/FERPlus"):
        read_ferplus_votes(tmp_path)


def test_label_agreement_counts_every_face():
    votes = np.zeros((4, len(FERPLUS_COLUMNS)), np.int64)
    votes[0, FERPLUS_COLUMNS.index("happiness")] = 9   # happy, agrees
    votes[1, FERPLUS_COLUMNS.index("contempt")] = 6    # angry -> contempt
    votes[2, [0, 3]] = 5                               # tie
    votes[3] = -1                                      # no votes
    labels = np.array([LABEL_NAMES.index("happy"), LABEL_NAMES.index("angry"), 0, 6])
    table = label_agreement(labels, votes)
    assert table.to_numpy().sum() == 4
    assert table.loc["happy", "happy"] == 1 and table.loc["angry", "contempt"] == 1
    assert table.loc["angry", TIE] == 1 and table.loc["neutral", NO_VOTES] == 1
    assert list(table.index) == list(LABEL_NAMES)
    assert set(FERPLUS_TO_LABEL.values()) == set(LABEL_NAMES)


def test_real_archive_votes_line_up_with_the_loaded_splits(fer2013, fer2013_path):
    votes = read_ferplus_votes(fer2013_path)
    for split in SPLITS:
        assert len(votes[split]) == len(fer2013[split])
    # Aligned rows agree on the easy class: FER+ keeps most original Happy faces Happy; misaligned rows would not.
    table = label_agreement(np.array(fer2013["test"]["label"]), votes["test"])
    assert table.loc["happy", "happy"] / table.loc["happy"].sum() > 0.85
