"""Benchmark: the training input pipeline of the finetune stage (batches from the uint8 cache,
`tlpipe.runtime.to_float_images` + `tlpipe.augment.Augment`, as `tlpipe.train.finetune.Training.epoch`
runs them) against torchvision `ImageFolder` + `DataLoader(num_workers=2)` decoding the same JPEGs
with the same augmentation (v2 RandomResizedCrop, RandomHorizontalFlip, ToImage/ToDtype, Normalize).

Target: >= 10x the DataLoader's images/s over one epoch.

    python benchmarks/bench_input.py [--data ZIP] [--n N] [--quick]

Both sides read the train split of the split stage (same files, same count), batch 32, 224 px,
and only produce batches (no model). Each measurement runs in a fresh child process, rounds
alternate, and the best round of each is compared. The target compares `Augment` doing what the
DataLoader does (random resized crop with the stage's default scale, flip; rotation and jitter
off); the stage's full default augmentation (plus 10 degree rotation, brightness/contrast jitter)
is printed too. The DataLoader's epoch includes starting its workers, as every epoch of a
notebook does; normalisation is part of the model in tlpipe, so only the DataLoader does it here.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TARGET = 10.0
BATCH = 32
SIZE = 224
KINDS = ("dataloader", "stage", "stage-full")


def finetune_defaults():
    from tlpipe import params

    return params.load(common.REPO / "params.yaml").finetune


def chosen_rows(work: Path, data: Path, n: int):
    """Sorted row numbers of the cached train split that both sides read: all, or a seeded sample."""
    import numpy as np

    from tlpipe.data.cache import load_split

    _, labels, _ = load_split(common.cache_folder(work, data, SIZE), "train")
    if n >= len(labels):
        return np.arange(len(labels))
    return np.sort(np.random.default_rng(0).choice(len(labels), n, replace=False))


def child_stage(work: Path, data: Path, n: int, full_augment: bool) -> dict:
    import numpy as np
    import torch

    from tlpipe.train.augment import Augment
    from tlpipe.data.cache import load_split
    from tlpipe.runtime import batches, to_float_images, tune_malloc

    tune_malloc()  # as stages/finetune.py does first
    cfg = finetune_defaults()
    images, labels, _ = load_split(common.cache_folder(work, data, SIZE), "train")
    rows = chosen_rows(work, data, n)
    if full_augment:
        augment = Augment(cfg.aug_scale_min, flip=True, rotation=cfg.aug_rotation, jitter=cfg.aug_jitter)
    else:  # the DataLoader side's augmentation: crop + flip
        augment = Augment(cfg.aug_scale_min, flip=True, rotation=0.0, jitter=0.0)
    generator = torch.Generator().manual_seed(0)
    device = torch.device("cpu")
    seen = 0
    start = time.perf_counter()
    # the loop of tlpipe.train.finetune.Training.epoch, without the model
    order = rows[torch.randperm(len(rows), generator=generator).numpy()]
    for part in batches(len(order), BATCH):
        idx = np.sort(order[part])
        x = augment(to_float_images(images[idx], device, cfg.channels_last), generator)
        y = torch.from_numpy(labels[idx]).to(device)
        seen += len(y)
    seconds = time.perf_counter() - start
    assert x.shape[1:] == (3, SIZE, SIZE) and x.dtype == torch.float32
    return {"seconds": seconds, "images": seen}


def child_dataloader(work: Path, data: Path, n: int) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision.transforms import v2

    cfg = finetune_defaults()
    from tlpipe.data.cache import load_split

    _, _, index = load_split(common.cache_folder(work, data, SIZE), "train")
    prefix = data.name + "/"
    root = common.extracted_folder(work, data)
    train_root = root / "chest_xray" / "train"
    wanted = {str(root / p[len(prefix):]) for p in index["path"].iloc[chosen_rows(work, data, n)]}
    transform = v2.Compose([
        v2.RandomResizedCrop(SIZE, scale=(cfg.aug_scale_min, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    ])
    dataset = datasets.ImageFolder(str(train_root), transform=transform, is_valid_file=lambda p: p in wanted)
    assert len(dataset) == len(wanted), (len(dataset), len(wanted))
    seen = 0
    start = time.perf_counter()
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=2)
    for x, y in loader:
        seen += len(y)
    seconds = time.perf_counter() - start
    assert x.shape[1:] == (3, SIZE, SIZE) and x.dtype == torch.float32
    return {"seconds": seconds, "images": seen}


def measure(kind: str, args, n: int) -> dict:
    result = common.measure_child(__file__, args, kind, "--n", str(n))
    print(f"  {kind:11s} {result['images']:5d} images: {result['rate']:7.0f} img/s "
          f"({result['seconds']:.2f} s timed, {result['wall']:.2f} s process), "
          f"peak tree RSS {result['peak_rss'] / 2**20:.0f} MiB", flush=True)
    return result


def main() -> int:
    import argparse

    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=None, help="images per epoch (default: the whole train split; quick 512)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 2, quick 1)")
    p.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.data = common.check_data(args.data)
    if args.child:
        result = child_dataloader(args.work, args.data, args.n) if args.child == "dataloader" \
            else child_stage(args.work, args.data, args.n, args.child == "stage-full")
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    table = common.split_table(args.work, args.data)
    common.extracted_folder(args.work, args.data)
    common.cache_folder(args.work, args.data, SIZE)
    n_train = int((table["split"] == "train").sum())
    n = min(args.n or (512 if args.quick else n_train), n_train)
    rounds = args.rounds or (1 if args.quick else 2)
    print(f"[speed] one epoch of {n} train images, batch {BATCH}, {SIZE} px, {rounds} round(s)", flush=True)
    best = dict.fromkeys(KINDS)
    for _ in range(rounds):
        for kind in KINDS:
            r = measure(kind, args, n)
            if best[kind] is None or r["rate"] > best[kind]["rate"]:
                best[kind] = r
    ratio = best["stage"]["rate"] / best["dataloader"]["rate"]
    summary = common.Summary("bench_input: finetune input (uint8 cache + batched tensor augment) vs ImageFolder + DataLoader(num_workers=2)")
    summary.figure(f"{n} images, batch {BATCH}, {SIZE} px: ImageFolder+DataLoader(2 workers) "
                   f"{best['dataloader']['rate']:6.0f} img/s ({best['dataloader']['seconds']:.1f} s/epoch), "
                   f"cache+Augment (crop+flip) {best['stage']['rate']:6.0f} img/s ({best['stage']['seconds']:.1f} s/epoch), ratio {ratio:.2f}x")
    full = best["stage-full"]
    summary.figure(f"cache+Augment with the stage's full default augmentation (+rotation, jitter) {full['rate']:6.0f} img/s "
                   f"({full['seconds']:.1f} s/epoch), ratio {full['rate'] / best['dataloader']['rate']:.2f}x")
    summary.target("training input images/s vs ImageFolder+DataLoader (crop+flip both)", ratio, TARGET)
    return summary.print()


if __name__ == "__main__":
    sys.exit(main())
