"""Near-duplicates (re-encoded, brightened, cropped by a few pixels, resized) are found, grouped and
reported across splits; distinct images are not."""

import io
import numpy as np
import pytest
from PIL import Image, ImageEnhance

from conftest import split_cfg
from tlpipe.data import phash
from tlpipe.data.raw import RawData
from tlpipe.data.split import build_split, split_metrics


def smooth_image(seed: int, size: int = 128) -> Image.Image:
    """A photo-like picture: coarse random shapes plus finer detail, different for every seed."""
    rng = np.random.default_rng(seed)
    layers = [Image.fromarray(rng.integers(0, 256, (n, n, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
              for n in (4, 8, 16)]
    pixels = sum(np.asarray(layer, dtype=np.float64) * w for layer, w in zip(layers, (0.5, 0.3, 0.2)))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


VARIANTS = {
    "reencoded": lambda im: jpeg(im, 55),
    "brightened": lambda im: jpeg(ImageEnhance.Brightness(im).enhance(1.3)),
    "cropped": lambda im: jpeg(im.crop((3, 2, im.width - 2, im.height - 3))),
    "resized": lambda im: jpeg(im.resize((96, 96))),
}


@pytest.fixture
def leaky_set(tmp_path):
    """train/ and test/ with distinct images, plus one variant of each of 4 test images put in train/."""
    root = tmp_path / "raw" / "set"
    sources = {}
    for s, (split, count) in enumerate((("train", 30), ("test", 8))):
        for c, label in enumerate(("cat", "dog")):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                seed = s * 1000 + c * 100 + i
                path = folder / f"{label}{i:02d}.jpg"
                sources[path] = smooth_image(seed)
                path.write_bytes(jpeg(sources[path]))
    planted = {}
    for k, (name, make) in enumerate(VARIANTS.items()):
        label = ("cat", "dog")[k % 2]
        original = root / "test" / label / f"{label}{k:02d}.jpg"
        copy = root / "train" / label / f"{name}_of_test_{k}.jpg"
        copy.write_bytes(make(sources[original]))
        planted[copy.relative_to(tmp_path / "raw").as_posix()] = original.relative_to(tmp_path / "raw").as_posix()
    return tmp_path / "raw", planted


def test_variants_of_a_test_image_in_train_are_found_and_grouped_and_distinct_ones_are_not(leaky_set):
    raw, planted = leaky_set
    table, report = build_split(RawData(raw), split_cfg())
    found = {frozenset(pair) for pair in report.near_duplicate_pairs}
    assert found == {frozenset(pair) for pair in planted.items()}  # every variant, and nothing else
    group = dict(zip(table["path"], table["group"]))
    assert all(group[copy] == group[original] for copy, original in planted.items())
    leak = split_metrics(table, report, 0.97)["near_duplicates"]
    assert leak["across_splits"]["test"]["images"] == 4
    assert leak["across_splits"]["test"]["per_class"] == {"cat": 2, "dog": 2}
    assert leak["across_splits"]["test"]["with_a_match_in"] == {"train": 4}
    assert leak["pairs"] == 4 and leak["largest_group"] == 2 and leak["pairs_with_different_labels"] == 0
    # validation is carved from train only, and never holds a training image's near-duplicate
    assert leak["across_splits"]["val"]["images"] == 0


def test_drop_removes_the_near_duplicates_from_train(leaky_set):
    raw, planted = leaky_set
    table, report = build_split(RawData(raw), split_cfg(cross_split_duplicates="drop"))
    assert not set(planted) & set(table["path"])
    reasons = {s["path"]: s["reason"] for s in report.skipped}
    assert all(reasons[copy] == f"near-duplicate of {original} (test split)" for copy, original in planted.items())
    assert split_metrics(table, report, 0.97)["near_duplicates"]["across_splits"]["test"]["images"] == 0


def test_a_carved_test_split_never_separates_near_duplicates(leaky_set):
    raw, planted = leaky_set
    for seed in range(4):
        table, report = build_split(RawData(raw), split_cfg(existing_test="train", test_fraction=0.3, seed=seed))
        split = dict(zip(table["path"], table["split"]))
        assert all(split[copy] == split[original] for copy, original in planted.items())
        across = split_metrics(table, report, 0.97)["near_duplicates"]["across_splits"]
        assert across["test"]["images"] == across["val"]["images"] == 0


def test_off_finds_no_near_duplicates(leaky_set):
    raw, _ = leaky_set
    _, report = build_split(RawData(raw), split_cfg(near_duplicate_similarity=None))
    assert report.near_duplicate_pairs == []


@pytest.mark.parametrize("n", [300, 3000])
def test_multi_index_search_finds_exactly_the_pairs_within_the_radius(n, monkeypatch):
    """Every pair within CANDIDATE_BITS, once, as comparing all pairs finds them, also when the
    lookups and candidates come in many small blocks and one bucket holds many identical hashes."""
    monkeypatch.setattr(phash, "LOOKUP_BLOCK", 500)
    monkeypatch.setattr(phash, "CANDIDATE_BLOCK", 700)
    rng = np.random.default_rng(n)
    centres = rng.integers(0, 2**63, n // 10, dtype=np.uint64)
    hashes = [centres]
    for flips in range(1, 9):  # clusters at 1 to 12 bits from their centre: inside and outside the radius
        noise = np.zeros(len(centres), dtype=np.uint64)
        for bit in rng.integers(0, 64, (flips + flips // 2, len(centres))):
            noise |= np.uint64(1) << bit.astype(np.uint64)
        hashes.append(centres ^ noise)
    hashes = np.concatenate(hashes + [np.zeros(40, dtype=np.uint64)])
    distance = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    i, j = np.nonzero(np.triu(distance <= phash.CANDIDATE_BITS, 1))
    expected = set(zip(i.tolist(), j.tolist()))
    found = [(a, b, d) for i, j, d in phash.candidate_pairs(hashes, phash.CANDIDATE_BITS)
             for a, b, d in zip(i.tolist(), j.tolist(), d.tolist())]
    assert len(found) == len({(a, b) for a, b, _ in found})  # no pair twice
    assert {(a, b) for a, b, _ in found} == expected
    assert all(d == distance[a, b] for a, b, d in found)
    assert 0 < len(expected) < len(hashes) * (len(hashes) - 1) / 2 / 10


def test_the_search_reads_thumbnails_from_their_file_as_from_memory(monkeypatch):
    """Fingerprints keeps thumbnails in a temporary file: what the search reads back, block by
    small block, is what was added, so it confirms the same pairs as with the thumbnails in memory."""
    from tlpipe.data.duplicates import Fingerprints

    monkeypatch.setattr(phash, "CONFIRM_BLOCK", 7)
    rng = np.random.default_rng(0)
    images = [smooth_image(seed, 64) for seed in range(12)]
    contents = [jpeg(im) for im in images] + [jpeg(im, 40) for im in images[:6]] + [jpeg(Image.new("RGB", (64, 64)))] * 2
    found = [phash.fingerprint(content) for content in contents]
    prints = Fingerprints(len(found) + 5)
    for k, (code, thumb) in enumerate(found):
        prints.add(f"img{k}.jpg", code, thumb)
    in_memory = np.stack([thumb for _, thumb in found])
    hashes, flat = prints.hashes[:len(prints)], prints.flat[:len(prints)]
    with prints.thumbnails() as thumbs:
        rows = rng.permutation(len(found))
        assert np.array_equal(thumbs[rows], in_memory[rows])
        from_file = phash.near_duplicates(hashes, thumbs, flat, 0.97)
    prints.close()
    from_memory = phash.near_duplicates(hashes, in_memory, ~in_memory.any(axis=1), 0.97)
    assert np.array_equal(from_file, from_memory)
    pairs = {tuple(pair) for pair in from_file.tolist()}
    assert {(k, 12 + k) for k in range(6)} <= pairs  # each re-encoded copy found
    assert (18, 19) in pairs and flat[18] and flat[19]  # two flat images: by hash alone
