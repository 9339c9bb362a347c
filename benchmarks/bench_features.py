"""Benchmark: the extract-features stage (`tlpipe.features.extract_features` in a process set up
as stages/extract_features.py sets it up: `tune_malloc()` first, the Classifier with an Identity
head, the stage's defaults: batch 64, channels_last, CPU threads as torch picks them) against a
bare `model(x)` loop on float input prepared beforehand, same model, batch size and threads.

Targets: the stage's images/s >= 0.9x the best bare loop (malloc tuned,
channels_last), and tf_efficientnet_lite0 at 224 px >= 120 images/s on 2 cores.

    python benchmarks/bench_features.py [--data ZIP] [--n N] [--quick]

Every variant runs in its own fresh process (mallopt is per process), rounds alternate, and the
best round of each is kept. The bare loop also runs without the malloc tuning and without
channels_last so that each lever shows. The bare loop gets one untimed warm-up batch; the stage
is timed over its whole call (its first batch included), which favours the bare loop.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

RATIO_TARGET = 0.9
RATE_TARGET = 120.0
BACKBONE = "efficientnet_lite0"
BATCH = 64
SIZE = 224
VARIANTS = {  # name: (malloc tuned, channels_last)
    "bare": (True, True),
    "bare-no-malloc": (False, True),
    "bare-no-cl": (True, False),
    "bare-plain": (False, False),
}


def child_stage(work: Path, data: Path, n: int) -> dict:
    # The imports and calls of stages/extract_features.py main(), in that order.
    from torch import nn

    from tlpipe.model.backbones import create_backbone
    from tlpipe.model.classifier import Classifier
    from tlpipe.data.cache import load_split
    from tlpipe.train.features import extract_features
    from tlpipe.runtime import pick_device, tune_malloc

    tune_malloc()
    backbone = create_backbone(BACKBONE, "default")
    model = Classifier(backbone.body, nn.Identity(), backbone.mean, backbone.std)
    device = pick_device("auto")
    images, _, _ = load_split(common.cache_folder(work, data, SIZE), "train")
    images = images[:n]
    n = len(images)  # a small data set holds fewer
    start = time.perf_counter()
    features = extract_features(model, images, BATCH, device, False, desc="train")
    seconds = time.perf_counter() - start
    assert features.shape == (n, backbone.num_features), features.shape
    return {"seconds": seconds, "images": n, "threads": _threads()}


def child_bare(work: Path, data: Path, n: int, tuned: bool, channels_last: bool) -> dict:
    import numpy as np
    import torch

    from tlpipe.model.backbones import create_backbone
    from tlpipe.data.cache import load_split
    from tlpipe.runtime import tune_malloc

    if tuned:
        tune_malloc()
    backbone = create_backbone(BACKBONE, "default")
    model = backbone.body.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=torch.channels_last)
    images, _, _ = load_split(common.cache_folder(work, data, SIZE), "train")
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    # a few distinct batches, prepared beforehand (normalised floats), cycled through
    rows = [np.arange(i * BATCH, (i + 1) * BATCH) % len(images) for i in range(4)]  # a small data set is cycled
    prepared = [((torch.from_numpy(np.array(images[r])).permute(0, 3, 1, 2).float() / 255 - mean) / std)
                .contiguous(memory_format=fmt) for r in rows]
    sizes = [BATCH] * (n // BATCH) + ([n % BATCH] if n % BATCH else [])
    with torch.inference_mode():
        model(prepared[0])  # warm-up, not timed
        start = time.perf_counter()
        for i, size in enumerate(sizes):
            out = model(prepared[i % len(prepared)][:size])
        seconds = time.perf_counter() - start
    assert out.shape[1] == backbone.num_features
    return {"seconds": seconds, "images": sum(sizes), "threads": _threads()}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def measure(kind: str, args, n: int) -> dict:
    result = common.measure_child(__file__, args, kind, "--n", str(n))
    print(f"  {kind:15s} {result['images']:5d} images: {result['rate']:6.1f} img/s "
          f"({result['seconds']:.2f} s timed, {result['wall']:.2f} s process, {result['threads']} threads), "
          f"peak RSS {result['peak_rss'] / 2**20:.0f} MiB", flush=True)
    return result


def main() -> int:
    import argparse

    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=None, help="images per measurement (default 1024, quick 256)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 2, quick 1)")
    p.add_argument("--child", choices=("stage", *VARIANTS), help=argparse.SUPPRESS)
    args = p.parse_args()
    args.data = common.check_data(args.data)
    if args.child:
        if args.child == "stage":
            result = child_stage(args.work, args.data, args.n)
        else:
            result = child_bare(args.work, args.data, args.n, *VARIANTS[args.child])
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    common.cache_folder(args.work, args.data, SIZE)
    n = args.n or (256 if args.quick else 1024)
    rounds = args.rounds or (1 if args.quick else 2)
    print(f"[speed] {BACKBONE} at {SIZE} px, batch {BATCH}, {n} images per run, {rounds} round(s)", flush=True)
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for kind in ("stage", *VARIANTS):
            r = measure(kind, args, n)
            if kind not in best or r["rate"] > best[kind]["rate"]:
                best[kind] = r
    summary = common.Summary(f"bench_features: extract-features stage vs a bare model(x) loop ({BACKBONE} = tf_efficientnet_lite0, {SIZE} px)")
    labels = {"bare": "bare loop, malloc tuned + channels_last", "bare-no-malloc": "bare loop, glibc malloc defaults + channels_last",
              "bare-no-cl": "bare loop, malloc tuned, NCHW", "bare-plain": "bare loop, glibc defaults, NCHW (plain notebook)"}
    summary.figure(f"stage (extract_features, defaults)                   {best['stage']['rate']:6.1f} img/s")
    for kind, label in labels.items():
        summary.figure(f"{label:52s} {best[kind]['rate']:6.1f} img/s  (stage {best['stage']['rate'] / best[kind]['rate']:.2f}x)")
    summary.target("stage images/s vs best bare loop", best["stage"]["rate"] / best["bare"]["rate"], RATIO_TARGET)
    summary.target(f"stage images/s, {BACKBONE} {SIZE} px", best["stage"]["rate"], RATE_TARGET, unit=" img/s")
    return summary.print()


if __name__ == "__main__":
    sys.exit(main())
