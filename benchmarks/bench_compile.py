"""Benchmark: does `torch.compile` pay for the finetune stage on this machine?

The stage's model (params.yaml's backbone and finetune section as shipped, every block trainable)
takes the stage's training step (AdamW, cross-entropy) on a batch of 32, eager and compiled, in
one process. Reported per size:

- the compile time from an empty cache (TORCHINDUCTOR_CACHE_DIR set to a fresh folder), for
  training, and again for validation (eval mode is a second graph);
- eager and compiled training images/s, in alternating rounds so that a noisy machine weighs on both;
- the training images a run must hold for the compile to pay back: compile seconds divided by the
  seconds each image saves.

Target: compiled at least 1.0x eager (the compile itself is printed, not judged: whether it pays
depends on the run's length, which the last figure gives).

    python benchmarks/bench_compile.py [--sizes 128 224] [--rounds 3] [--quick]

`--quick` is a smoke run: 32 px, one short round, the "eager" compile backend (graph capture only).
"""

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BATCH = 32
STEPS_PER_ROUND = 6


def measure(size: int, rounds: int, steps: int, backend: str) -> dict:
    """Compile times and alternating eager/compiled training rates at `size` px, in this process."""
    from dataclasses import replace

    import torch

    from tlpipe import params
    from tlpipe.model.backbones import create_backbone
    from tlpipe.runtime import share_cpu, tune_malloc
    from tlpipe.train.finetune import build_model

    tune_malloc()  # what stages/finetune.py does first
    share_cpu()
    p = params.load(common.REPO / "params.yaml")
    cfg = replace(p.finetune, head_init="random")
    weights = "default" if p.backbone.name.startswith("efficientnet_lite") else "none"
    model = build_model(create_backbone(p.backbone.name, weights), 2, cfg)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    compiled = torch.compile(model, backend=backend)
    images, labels = torch.randn(BATCH, 3, size, size), torch.randint(0, 2, (BATCH,))

    def step(forward) -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(forward(images), labels).backward()
        optimizer.step()

    model.train()
    start = time.perf_counter()
    step(compiled)
    compile_train = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        compiled(images)
        compile_eval = time.perf_counter() - start
    model.train()
    step(model)  # warm-up of the eager path
    rates: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(rounds):
        for name, forward in (("eager", model), ("compiled", compiled)):
            start = time.perf_counter()
            for _ in range(steps):
                step(forward)
            rates[name].append(steps * BATCH / (time.perf_counter() - start))
    return {"size": size, "compile_train_s": compile_train, "compile_eval_s": compile_eval, "rates": rates,
            "backbone": p.backbone.name, "threads": torch.get_num_threads()}


def _rounded(rates: list[float]) -> str:
    return ", ".join(f"{rate:.1f}" for rate in rates)


def main() -> int:
    import argparse

    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 224], help="input sizes, px (default 128 224)")
    p.add_argument("--rounds", type=int, default=3, help="alternating eager/compiled rounds (default %(default)s)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--backend", default="inductor", help=argparse.SUPPRESS)
    args = p.parse_args()
    sizes, rounds, steps = ([32], 1, 1) if args.quick else (args.sizes, args.rounds, STEPS_PER_ROUND)
    backend = "eager" if args.quick else args.backend
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, rounds, steps, backend)), flush=True)
        return 0

    summary = common.Summary(f"bench_compile: torch.compile ({backend}) of the finetune step, batch {BATCH}, "
                             "from an empty compile cache")
    for size in sizes:
        with tempfile.TemporaryDirectory() as cache:  # each size compiles from nothing, as a first run does
            cmd = [sys.executable, __file__, "--child", str(size), "--backend", backend,
                   "--rounds", str(args.rounds), *(["--quick"] if args.quick else [])]
            out, _, _ = common.run_measured(cmd, env={"TORCHINDUCTOR_CACHE_DIR": cache})
        r = common.result_line(out)
        eager, compiled = (sum(r["rates"][k]) / len(r["rates"][k]) for k in ("eager", "compiled"))
        compile_s = r["compile_train_s"] + r["compile_eval_s"]
        saved_per_image = 1 / eager - 1 / compiled
        pays_after = f"{compile_s / saved_per_image:,.0f} training images" if saved_per_image > 0 else "never"
        summary.figure(f"{size} px ({r['backbone']}, {r['threads']} threads): eager {eager:.1f} img/s, compiled "
                       f"{compiled:.1f} img/s (rounds: {_rounded(r['rates']['eager'])} / {_rounded(r['rates']['compiled'])}); compile "
                       f"{r['compile_train_s']:.0f} s for training + {r['compile_eval_s']:.0f} s for validation; "
                       f"pays back after {pays_after}")
        summary.target(f"{size} px compiled / eager", compiled / eager, 1.0)
    return summary.print()


if __name__ == "__main__":
    sys.exit(main())
