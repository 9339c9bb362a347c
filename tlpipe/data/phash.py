"""Near-duplicate images: the same picture re-encoded, re-contrasted, resized or cropped by a few
pixels, found by a perceptual hash and confirmed by a correlation of thumbnails.

Two steps, both on one 32x32 grayscale version of each image (JPEG draft mode decodes it at 1/8
scale for almost nothing):
1. candidates: the DCT pHash (as in the imagehash library: 2-D DCT, the 8x8 lowest frequencies
   against their median, 64 bits) differs in at most CANDIDATE_BITS bits, found by multi-index
   hashing (Norouzi et al. 2012), exact and sub-quadratic: the hash is cut into m chunks, and two
   hashes within 10 bits agree within floor(10 / m) bits on at least one chunk, so each image looks
   up only the chunk values that close to its own, in each chunk's sorted table. m is chosen for
   the number of images by an estimate of lookups plus candidates (6 chunks of 10-11 bits below
   ~14,000 images, 4 of 16 bits up to ~680,000, 3 of 21-22 bits above); candidates are checked
   in bounded blocks (benchmarks/bench_near_duplicates.py);
2. confirmed: the Pearson correlation of the 16x16 thumbnails is at least `similarity`.
Brightness and contrast changes leave the correlation at ~1.0; a crop of 4 of 224 pixels per side
keeps it >= 0.90 (10th percentile 0.945) on the brain MRI set, while distinct slices of one scanner
can reach 0.9 too: the default 0.97 groups 947 shipped test images with training images there and
joins only 47 pairs of differently labelled images (measured, docs/results.md).
"""

import io
import math
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageOps
from scipy.fft import dctn

HASH_SIDE = 32      # the image is shrunk to this before the DCT
LOW_FREQUENCIES = 8  # the hash keeps the LOW_FREQUENCIES x LOW_FREQUENCIES lowest DCT coefficients
THUMB_SIDE = 16     # the thumbnail compared in step 2
CANDIDATE_BITS = 10  # step 1: pHashes at most this many bits apart are compared in step 2
MAX_CHUNK_BITS = 22  # a chunk's lookup table has 2**bits + 1 entries
LOOKUP_BLOCK = 1 << 16     # chunk lookups made at once
CANDIDATE_BLOCK = 1 << 16  # candidate pairs checked at once: with LOOKUP_BLOCK, bounds the search's memory
CONFIRM_BLOCK = 1 << 11    # candidate pairs whose thumbnails are gathered and correlated at once (~4 MB)


MIN_SIDE = HASH_SIDE  # smaller images are not searched: blown up to 32 px, unrelated 8x8 digits look alike


def too_small(content: bytes) -> bool:
    """An image whose shorter side is below MIN_SIDE (unreadable ones are not "too small")."""
    try:
        return min(Image.open(io.BytesIO(content)).size) < MIN_SIDE
    except Exception:  # noqa: BLE001 - an unreadable file is the resize stage's to report
        return False


def _gray(content: bytes) -> np.ndarray | None:
    try:
        image = Image.open(io.BytesIO(content))
        if image.format == "JPEG":
            image.draft("L", (HASH_SIDE, HASH_SIDE))  # the decoder shrinks by up to 8x for free
        image = ImageOps.exif_transpose(image).convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BILINEAR,
                                                                    reducing_gap=2.0)
    except Exception:  # noqa: BLE001 - an unreadable file is the resize stage's to report
        return None
    return np.asarray(image, dtype=np.float64)


def _phash(pixels: np.ndarray) -> int:
    low = dctn(pixels, norm="ortho")[:LOW_FREQUENCIES, :LOW_FREQUENCIES]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def phash(content: bytes) -> int | None:
    """The 64-bit perceptual hash of an image file's bytes, or None if it cannot be decoded."""
    pixels = _gray(content)
    return None if pixels is None else _phash(pixels)


def fingerprint(content: bytes) -> tuple[int, np.ndarray] | None:
    """(pHash, unit-norm zero-mean 16x16 thumbnail as float32) of an image file, None if undecodable."""
    pixels = _gray(content)
    if pixels is None:
        return None
    factor = HASH_SIDE // THUMB_SIDE
    thumb = pixels.reshape(THUMB_SIDE, factor, THUMB_SIDE, factor).mean((1, 3)).ravel()
    thumb -= thumb.mean()
    norm = np.linalg.norm(thumb)
    return _phash(pixels), (thumb / norm if norm > 0 else thumb).astype(np.float32)


def near_duplicates(hashes: np.ndarray, thumbs, flat: np.ndarray, similarity: float) -> np.ndarray:
    """(K, 2) int64 rows (i, j), i < j: the pairs within CANDIDATE_BITS whose thumbnails correlate at
    >= `similarity`, confirmed one bounded block of candidates at a time (`thumbs[rows]` gives those
    rows' thumbnails: an array, or tlpipe.data.duplicates.MappedRows). Flat images (`flat`: a zero
    thumbnail) match nothing but themselves by hash."""
    found = [np.zeros((0, 2), dtype=np.int64)]
    for candidates in candidate_pairs(hashes, CANDIDATE_BITS):
        for start in range(0, len(candidates[0]), CONFIRM_BLOCK):
            i, j, distance = (column[start:start + CONFIRM_BLOCK] for column in candidates)
            corr = np.einsum("ij,ij->i", thumbs[i], thumbs[j])
            keep = (corr >= similarity) | (flat[i] & flat[j] & (distance == 0))
            found.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(found)


def _chunk(hashes: np.ndarray, shift: int, bits: int) -> np.ndarray:
    return ((hashes >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int64)


def _layout(n: int, max_distance: int) -> tuple[list[tuple[int, int]], int]:
    """[(shift, bits)] of each chunk and the per-chunk radius: the number of chunks with the fewest
    expected lookups plus candidates for `n` uniformly spread hashes."""
    def cost(m: int) -> float:
        widths = [64 // m + (c < 64 % m) for c in range(m)]
        lookups = [sum(math.comb(w, k) for k in range(max_distance // m + 1)) for w in widths]
        return sum(v * (1 + n / 2 ** w) for v, w in zip(lookups, widths))

    m = min((m for m in range(2, 9) if -(-64 // m) <= MAX_CHUNK_BITS), key=cost)
    widths = [64 // m + (c < 64 % m) for c in range(m)]
    shifts = np.cumsum([0] + widths[:-1]).tolist()
    return list(zip(shifts, widths)), max_distance // m


def _within(bits: int, radius: int) -> np.ndarray:
    """Every `bits`-bit value with at most `radius` bits set (the XOR masks of a lookup)."""
    values = np.arange(1 << bits, dtype=np.uint64)
    return values[np.bitwise_count(values) <= radius].astype(np.int64)


def _expanded(items: np.ndarray, low: np.ndarray, high: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(item, position) for every position in [low, high) of each lookup, in blocks of about
    CANDIDATE_BLOCK: a bucket larger than a block is cut into pieces first."""
    hit = high > low
    items, low, high = items[hit], low[hit], high[hit]
    pieces = -(-(high - low) // CANDIDATE_BLOCK)
    if np.any(pieces > 1):
        entry = np.repeat(np.arange(len(low)), pieces)
        first_piece = np.repeat(np.cumsum(pieces) - pieces, pieces)
        low = low[entry] + (np.arange(len(entry)) - first_piece) * CANDIDATE_BLOCK
        high, items = np.minimum(low + CANDIDATE_BLOCK, high[entry]), items[entry]
    sizes = high - low
    ends = np.cumsum(sizes)
    total = ends[-1] if len(ends) else 0
    cuts = np.searchsorted(ends, np.arange(CANDIDATE_BLOCK, total, CANDIDATE_BLOCK), side="right")
    for start, stop in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(sizes)]])):
        if stop > start:
            counts = sizes[start:stop]
            offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            yield np.repeat(items[start:stop], counts), np.repeat(low[start:stop], counts) + offsets


def candidate_pairs(hashes: np.ndarray, max_distance: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every pair (i, j), i < j, of hashes within `max_distance` bits, exactly once, as blocks of
    (i, j, distance) int64 arrays of bounded size (multi-index hashing: module docstring)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    chunks, radius = _layout(len(hashes), max_distance)
    for c, (shift, bits) in enumerate(chunks):
        values = _chunk(hashes, shift, bits)
        order = np.argsort(values, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(values, minlength=1 << bits))])
        masks = _within(bits, radius)
        step = max(1, LOOKUP_BLOCK // len(masks))
        for start in range(0, len(hashes), step):
            items = np.arange(start, min(start + step, len(hashes)))
            own = np.repeat(values[items], len(masks))
            keys = own ^ np.tile(masks, len(items))
            # a pair whose chunks differ is looked up from the smaller chunk value only
            upward = keys >= own
            keys, lookups = keys[upward], np.repeat(items, len(masks))[upward]
            for i, position in _expanded(lookups, bounds[keys], bounds[keys + 1]):
                j = order[position]
                keep = (j > i) | (values[j] != values[i])  # one bucket: each pair is met from both ends
                i, j = np.minimum(i[keep], j[keep]), np.maximum(i[keep], j[keep])
                difference = hashes[i] ^ hashes[j]
                distance = np.bitwise_count(difference).astype(np.int64)
                keep = distance <= max_distance
                for earlier_shift, earlier_bits in chunks[:c]:  # found already through an earlier chunk
                    keep &= np.bitwise_count(_chunk(difference, earlier_shift, earlier_bits)) > radius
                if keep.any():
                    yield i[keep], j[keep], distance[keep]
