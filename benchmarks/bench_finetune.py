"""Benchmark: the finetune stage's training epoch as `dvc repro` runs it: `Training.epoch` of
tlpipe.train.finetune with params.yaml's finetune section as shipped (batch 32, augmentation,
class weights, layer-wise rates, AdamW, one-cycle), the first epoch with every block trainable,
over the whole training split of the chest X-ray cache (made at 128 and at 224 px by the resize
stage's code) read from its shards in the stage's shuffled order, in a process set up as
stages/finetune.py sets it up (`tune_malloc()` and `share_cpu()` first).

Targets: >= 25 train images/s at 224 px and >= 70 at 128 px on 2 cores. On a GPU: ResNet-50 at
224 px, bf16 autocast + channels_last, >= 2,500 train images/s and >= 5,000 feature-extraction
images/s, the GPU busy > 90% of each (nvidia-smi sampled every 0.5 s); reported as not measured
when there is no GPU.

    python benchmarks/bench_finetune.py [--data ZIP] [--batches N] [--quick]

Each size runs in a fresh child process: 2 warm-up batches, then a whole epoch (or `--batches` batches;
`--quick`: 3). The figure printed beside each is the stage's own `train_images_per_s` for that epoch.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CPU_TARGETS = {224: 25.0, 128: 70.0}
GPU_TRAIN_TARGET = 2500.0
GPU_FEATURES_TARGET = 5000.0
GPU_BUSY_TARGET = 90.0  # % of the timed pass: the input pipeline keeps the GPU fed
WARMUP_BATCHES = 2


def _train_rate(backbone_name: str, cache: Path, batches: int | None, batch_size: int, device_name: str) -> dict:
    """Images/s of one stage epoch after WARMUP_BATCHES, every block trainable (the strategy `all`
    of params.yaml); `batches`: only that many batches of the epoch."""
    from dataclasses import replace

    import torch

    from tlpipe import params
    from tlpipe.model.backbones import create_backbone
    from tlpipe.data.cache import load_classes, load_split
    from tlpipe.distributed import SINGLE
    from tlpipe.train.finetune import Split, Training, build_model
    from tlpipe.runtime import pick_device

    # the shipped params; head_init random only skips the probe's fit, which sets the head's
    # starting weights and nothing of the epoch's cost
    cfg = replace(params.load(common.REPO / "params.yaml").finetune, batch_size=batch_size, head_init="random")
    device = pick_device(device_name)
    images, labels, _ = load_split(cache, "train", paths=False)  # the shards' memory maps, as the stage reads them
    classes = load_classes(cache)
    backbone = create_backbone(backbone_name, "default" if backbone_name.startswith("efficientnet_lite") else "none")
    model = build_model(backbone, len(classes), cfg)
    epoch = cfg.freeze_epochs  # the first epoch in which every block trains
    train = Split(images, labels)
    if batches is not None:
        rows = slice(WARMUP_BATCHES * batch_size, (WARMUP_BATCHES + batches) * batch_size)
        train = Split(images[rows], labels[rows])
    warm = Split(images[:WARMUP_BATCHES * batch_size], labels[:WARMUP_BATCHES * batch_size])
    training = Training(model, train, cfg, len(classes), device, SINGLE)
    training.epoch(epoch, warm)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with common.GpuBusy() as busy:
        row = training.epoch(epoch)
        if device.type == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": len(train.labels), "stage_rate": row["train_images_per_s"],
            "trainable": trainable, "params": total, "threads": torch.get_num_threads(), "epoch": epoch,
            "gpu_busy": busy.percent if device.type == "cuda" else None}


def child_cpu(work: Path, data: Path, size: int, batches: int | None) -> dict:
    from tlpipe.runtime import share_cpu, tune_malloc

    tune_malloc()  # what stages/finetune.py does first
    share_cpu()
    return _train_rate("efficientnet_lite0", common.cache_folder(work, data, size), batches, 32, "cpu")


def child_gpu(work: Path, data: Path, batches: int) -> dict:
    import torch
    from torch import nn

    from tlpipe.model.backbones import create_backbone
    from tlpipe.model.classifier import Classifier
    from tlpipe.data.cache import load_split
    from tlpipe.train.features import extract_features

    torch.backends.cudnn.benchmark = True
    cache = common.cache_folder(work, data, 224)
    train = _train_rate("resnet50", cache, batches, 256, "cuda")
    backbone = create_backbone("resnet50", "none")
    model = Classifier(backbone.body, nn.Identity(), backbone.mean, backbone.std)
    images, _, _ = load_split(cache, "train")
    device = torch.device("cuda")
    extract_features(model, images[:512], 256, device)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    with common.GpuBusy() as busy:
        extract_features(model, images, 256, device)
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"train": train, "features": {"seconds": seconds, "images": len(images), "gpu_busy": busy.percent},
            "gpu": torch.cuda.get_device_name(0)}


def run_child(args, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--data", str(args.data), "--work", str(args.work),
           *(["--batches", str(args.batches)] if args.batches else []), *extra]
    out, wall, peak = common.run_measured(cmd)
    return common.result_line(out) | {"wall": wall, "peak_rss": peak}


def main() -> int:
    import argparse

    import torch

    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=None, help="timed batches per size (default: a whole epoch; quick 3)")
    p.add_argument("--child", choices=("cpu", "gpu"), help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.data = common.check_data(args.data)
    args.batches = args.batches or (3 if args.quick else None)
    if args.child:
        result = child_cpu(args.work, args.data, args.size, args.batches) if args.child == "cpu" \
            else child_gpu(args.work, args.data, args.batches)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    summary = common.Summary("bench_finetune: finetune training step (tlpipe.train.finetune.Training.epoch), efficientnet_lite0 all blocks trainable")
    for size in CPU_TARGETS:
        common.cache_folder(args.work, args.data, size)
    timed = f"{args.batches} timed batches" if args.batches else "a whole timed epoch"
    print(f"[cpu] the stage's epoch, batch 32, {WARMUP_BATCHES} warm-up batches + {timed} per size", flush=True)
    for size, target in CPU_TARGETS.items():
        r = run_child(args, "--child", "cpu", "--size", str(size))
        rate = r["images"] / r["seconds"]
        print(f"  {size} px (epoch {r['epoch']} of the stage's schedule): {rate:.1f} img/s "
              f"({r['images']} images in {r['seconds']:.1f} s; the stage's own train_images_per_s {r['stage_rate']:.1f}; "
              f"{r['trainable']}/{r['params']} params trainable; {r['threads']} threads; "
              f"peak RSS {r['peak_rss'] / 2**20:.0f} MiB)", flush=True)
        summary.figure(f"CPU {size} px, batch 32: {rate:6.1f} train img/s ({r['trainable'] / 1e6:.2f}M of "
                       f"{r['params'] / 1e6:.2f}M params trainable)")
        summary.target(f"finetune train images/s at {size} px (CPU)", rate, target, unit=" img/s")
    if torch.cuda.is_available():
        print("[gpu] ResNet-50, 224 px, batch 256, bf16 autocast + channels_last", flush=True)
        r = run_child(args, "--child", "gpu")
        train = r["train"]["images"] / r["train"]["seconds"]
        features = r["features"]["images"] / r["features"]["seconds"]
        summary.figure(f"GPU {r['gpu']}: ResNet-50 224 px train {train:.0f} img/s, feature extraction {features:.0f} img/s")
        summary.target("ResNet-50 224 px train images/s (GPU)", train, GPU_TRAIN_TARGET, unit=" img/s")
        summary.target("ResNet-50 224 px feature-extraction images/s (GPU)", features, GPU_FEATURES_TARGET, unit=" img/s")
        for name, busy in (("train", r["train"]["gpu_busy"]), ("feature extraction", r["features"]["gpu_busy"])):
            if busy is None:
                summary.skipped(f"GPU busy during {name} > {GPU_BUSY_TARGET:.0f}%", "not measured: no nvidia-smi")
            else:
                summary.target(f"GPU busy during {name} (nvidia-smi utilization.gpu)", busy, GPU_BUSY_TARGET, unit="%")
    else:
        summary.figure("GPU targets (ResNet-50 224 px: train >= 2500 img/s, features >= 5000 img/s): not measured: no GPU")
        summary.skipped("ResNet-50 GPU train >= 2500 img/s", "not measured: no GPU")
        summary.skipped("ResNet-50 GPU features >= 5000 img/s", "not measured: no GPU")
        summary.skipped(f"GPU busy during train and feature extraction > {GPU_BUSY_TARGET:.0f}%", "not measured: no GPU")
    return summary.print()


if __name__ == "__main__":
    sys.exit(main())
