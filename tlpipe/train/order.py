"""The order in which finetune sees the training images in an epoch: the one function every
process uses (under DDP each rank takes its slice of every global batch of this same order, so one
and N processes see the same samples).

Random across the data set, sequential on disk: the rows are grouped into blocks of BLOCK_ROWS
consecutive rows (the shards hold consecutive rows, so a block is one run of one shard file, or
two where it straddles a boundary), the blocks are shuffled over the whole split, and then the
rows are shuffled within windows of WINDOW_ROWS. An epoch reads each block as one run (a network
disk or object store sees large sequential reads, not random ones), while a batch mixes rows of
up to WINDOW_ROWS / BLOCK_ROWS places in the data set. A split of at most WINDOW_ROWS images is
one window: a plain random permutation. The order does not depend on how the split is sharded,
so any shard size trains the same model.
"""

import numpy as np

BLOCK_ROWS = 64        # consecutive rows read together (at 224 px: 9.6 MB, one sequential read)
WINDOW_ROWS = 8192     # rows shuffled together (at 224 px: 1.2 GB of page cache in flight)


def epoch_order(labels: np.ndarray, seed: int, epoch: int, balanced: bool = False,
                block_rows: int = BLOCK_ROWS, window_rows: int = WINDOW_ROWS) -> np.ndarray:
    """Row indices (int64, len(labels) of them) of one epoch, a pure function of its arguments.

    `balanced`: draw rows with replacement, each class equally likely (a balanced sampler), then
    order the draws the same way."""
    n = len(labels)
    rng = np.random.default_rng([seed, epoch])
    if balanced:
        counts = np.bincount(labels)
        weights = 1.0 / counts[labels]
        rows = np.sort(rng.choice(n, size=n, replace=True, p=weights / weights.sum()))
    else:
        rows = np.arange(n, dtype=np.int64)
    if n <= window_rows:
        return rng.permutation(rows)
    blocks = n // block_rows + 1
    rank = rng.permutation(blocks)[rows // block_rows]          # each block's place in the epoch
    rows = rows[np.argsort(rank, kind="stable")]                 # blocks shuffled, each still in disk order
    for start in range(0, n, window_rows):
        window = rows[start:start + window_rows]
        rows[start:start + window_rows] = window[rng.permutation(len(window))]
    return rows.astype(np.int64)
