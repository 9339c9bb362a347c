"""Benchmark: the resize stage (`tlpipe.cache.build_cache`, what stages/resize.py calls) against a
one-process notebook loop `Image.open -> convert -> resize -> save` over the extracted JPEGs.

Targets: >= 1.7x the loop's images/s; peak resident memory of the stage's
whole process tree (parent + decoding workers) at 4x the images within 1.3x.

    python benchmarks/bench_resize.py [--data ZIP] [--sizes 224,64] [--quick]

Each measurement runs in a fresh child process; the rounds alternate loop and stage, and the
best round of each is compared. The stage reads the zip itself (as the pipeline does); the loop
reads files extracted beforehand (extraction not timed), which favours the loop.
"""

import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SPEED_TARGET = 1.7
RSS_TARGET = 1.3


def child_baseline(work: Path, data: Path, n: int, size: int) -> dict:
    from PIL import Image

    table = sample(work, data, n)
    root = common.extracted_folder(work, data)
    prefix = data.name + "/"
    files = [root / p[len(prefix):] for p in table["path"]]
    out = work / "baseline-out"
    shutil.rmtree(out, ignore_errors=True)
    for f in files:
        (out / f.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for f in files:  # the notebook loop
        Image.open(f).convert("RGB").resize((size, size)).save(out / f.relative_to(root))
    seconds = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "images": len(files)}


def child_stage(work: Path, data: Path, n: int, size: int) -> dict:
    from tlpipe.data.resize import build_cache
    from tlpipe.data.raw import RawData

    table = sample(work, data, n)
    raw = common.raw_folder(work, data)
    out = work / "stage-out"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    metrics = build_cache(table, RawData(raw), out, size, "squash")  # workers=0: all cores, the default
    seconds = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "images": sum(metrics["images"].values()), "unreadable": metrics["unreadable_count"]}


def sample(work: Path, data: Path, n: int):
    table = common.split_table(work, data)
    if n < len(table):
        table = table.sample(n, random_state=0).sort_values("path").reset_index(drop=True)
    return table


def measure(kind: str, args, n: int, size: int) -> dict:
    result = common.measure_child(__file__, args, kind, "--n", str(n), "--size", str(size))
    print(f"  {kind:8s} {size:4d} px {result['images']:5d} images: {result['rate']:7.0f} img/s "
          f"({result['seconds']:.2f} s timed, {result['wall']:.2f} s process), "
          f"peak tree RSS {result['peak_rss'] / 2**20:.0f} MiB", flush=True)
    return result


def main() -> int:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="224,64", help="cache sizes to compare at, px (default: %(default)s: "
                   "224 = the chest X-ray preset, no shrinking; 64 = shrinking with JPEG draft mode)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds per size (default 2, quick 1)")
    p.add_argument("--child", choices=("baseline", "stage"), help=argparse_hidden())
    p.add_argument("--n", type=int, help=argparse_hidden())
    p.add_argument("--size", type=int, help=argparse_hidden())
    args = p.parse_args()
    args.data = common.check_data(args.data)
    if args.child:
        fn = child_baseline if args.child == "baseline" else child_stage
        print("RESULT " + json.dumps(fn(args.work, args.data, args.n, args.size)), flush=True)
        return 0

    table = common.split_table(args.work, args.data)
    common.extracted_folder(args.work, args.data)
    n_all = 600 if args.quick else len(table)
    rounds = args.rounds or (1 if args.quick else 2)
    sizes = [int(s) for s in args.sizes.split(",")]
    summary = common.Summary("bench_resize: resize stage (tlpipe.cache.build_cache) vs one-process Pillow loop")
    for size in sizes:
        print(f"[speed] {size} px, {n_all} images, {rounds} round(s)", flush=True)
        best = {"baseline": None, "stage": None}
        for _ in range(rounds):
            for kind in ("baseline", "stage"):
                r = measure(kind, args, n_all, size)
                if best[kind] is None or r["rate"] > best[kind]["rate"]:
                    best[kind] = r
        ratio = best["stage"]["rate"] / best["baseline"]["rate"]
        summary.figure(f"{size:4d} px, {n_all} images: loop {best['baseline']['rate']:6.0f} img/s, "
                       f"stage {best['stage']['rate']:6.0f} img/s, ratio {ratio:.2f}x")
        summary.target(f"resize {size} px images/s vs Pillow loop", ratio, SPEED_TARGET)

    n1, n4 = (250, 1000) if args.quick else (1000, 4000)
    size = sizes[0]
    print(f"[memory] stage at {n1} and {n4} images, {size} px", flush=True)
    small = measure("stage", args, n1, size)
    large = measure("stage", args, n4, size)
    rss_ratio = large["peak_rss"] / small["peak_rss"]
    summary.figure(f"peak RSS of the stage's process tree at {size} px: {n1} images {small['peak_rss'] / 2**20:.0f} MiB, "
                   f"{n4} images {large['peak_rss'] / 2**20:.0f} MiB, ratio {rss_ratio:.2f}x "
                   f"(output {n4 * size * size * 3 / 2**20:.0f} MiB)")
    summary.target(f"peak RSS at {n4 // n1}x the images", rss_ratio, RSS_TARGET, higher=False)
    return summary.print()


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
