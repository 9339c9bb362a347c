"""Benchmark: the finetune stage's training step (`tlpipe.train.finetune.Training.epoch`: batches from
the uint8 cache, batched augmentation, forward, backward, AdamW, one-cycle step) with every block
of efficientnet_lite0 (tf_efficientnet_lite0) trainable, in a process set up as
stages/finetune.py sets it up (`tune_malloc()` first, the model in channels_last as `fit` does).

Targets: >= 25 train images/s at 224 px and >= 70 at 128 px on 2 cores
(batch 32). On a GPU: ResNet-50 at 224 px, bf16 autocast + channels_last, >= 2,500 train images/s
and >= 5,000 feature-extraction images/s (reported as not measured when there is no GPU).

    python benchmarks/bench_finetune.py [--data ZIP] [--batches 12] [--quick]

Each size runs in a fresh child process: 2 warm-up batches, then `--batches` timed batches of
real cached chest X-ray images (the 128 px cache is made by the resize stage's code first).
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
WARMUP_BATCHES = 2


def _train_rate(backbone_name: str, cache: Path, batches: int, batch_size: int, device_name: str) -> dict:
    """Images/s of Training.epoch over `batches` batches after WARMUP_BATCHES, all blocks trainable."""
    from dataclasses import replace

    import torch

    from tlpipe import params
    from tlpipe.model.backbones import create_backbone
    from tlpipe.data.cache import load_classes, load_split
    from tlpipe.distributed import SINGLE
    from tlpipe.train.finetune import Split, Training, build_model
    from tlpipe.runtime import pick_device

    cfg = replace(params.load(common.REPO / "params.yaml").finetune, batch_size=batch_size, head_init="random",
                  aug_flip=True, class_balance="none", unfreeze="all")
    device = pick_device(device_name)
    images, labels, _ = load_split(cache, "train")
    classes = load_classes(cache)
    backbone = create_backbone(backbone_name, "default" if backbone_name.startswith("efficientnet_lite") else "none")
    model = build_model(backbone, len(classes), cfg)
    model.to(device)  # as fit() does
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    epoch = cfg.freeze_epochs  # the first unfrozen epoch: every block trains
    n_warm, n = WARMUP_BATCHES * batch_size, batches * batch_size
    warm = Split(images[:n_warm], labels[:n_warm])
    timed = Split(images[n_warm:n_warm + n], labels[n_warm:n_warm + n])
    # the stage's training loop, loss, optimizer, schedule and weight average; the schedule spans
    # enough epochs of the timed images for the warm-up and timed batches
    epochs = 2 + WARMUP_BATCHES // batches
    training = Training(model, timed, replace(cfg, epochs=epochs), len(classes), device, SINGLE)
    training.epoch(epoch, warm)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    row = training.epoch(epoch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": len(timed.labels), "stage_rate": row["train_images_per_s"],
            "trainable": trainable, "params": total, "threads": torch.get_num_threads(),
            "size": int(images.shape[1])}


def child_cpu(work: Path, data: Path, size: int, batches: int) -> dict:
    from tlpipe.runtime import tune_malloc

    tune_malloc()  # what stages/finetune.py does first
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
    extract_features(model, images, 256, device)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"train": train, "features": {"seconds": seconds, "images": len(images)},
            "gpu": torch.cuda.get_device_name(0)}


def run_child(args, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--data", str(args.data), "--work", str(args.work),
           "--batches", str(args.batches), *extra]
    out, wall, peak = common.run_measured(cmd)
    return common.result_line(out) | {"wall": wall, "peak_rss": peak}


def main() -> int:
    import argparse

    import torch

    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=None, help="timed batches per size (default 12, quick 3)")
    p.add_argument("--child", choices=("cpu", "gpu"), help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.data = common.check_data(args.data)
    args.batches = args.batches or (3 if args.quick else 12)
    if args.child:
        result = child_cpu(args.work, args.data, args.size, args.batches) if args.child == "cpu" \
            else child_gpu(args.work, args.data, args.batches)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    summary = common.Summary("bench_finetune: finetune training step (tlpipe.train.finetune.Training.epoch), efficientnet_lite0 all blocks trainable")
    for size in CPU_TARGETS:
        common.cache_folder(args.work, args.data, size)
    print(f"[cpu] batch 32, {WARMUP_BATCHES} warm-up + {args.batches} timed batches per size", flush=True)
    for size, target in CPU_TARGETS.items():
        r = run_child(args, "--child", "cpu", "--size", str(size))
        rate = r["images"] / r["seconds"]
        print(f"  {size} px: {rate:.1f} img/s ({r['images']} images in {r['seconds']:.1f} s; stage's own figure "
              f"{r['stage_rate']:.1f}; {r['trainable']}/{r['params']} params trainable; {r['threads']} threads; "
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
    else:
        summary.figure("GPU targets (ResNet-50 224 px: train >= 2500 img/s, features >= 5000 img/s): not measured: no GPU")
        summary.skipped("ResNet-50 GPU train >= 2500 img/s", "not measured: no GPU")
        summary.skipped("ResNet-50 GPU features >= 5000 img/s", "not measured: no GPU")
    return summary.print()


if __name__ == "__main__":
    sys.exit(main())
