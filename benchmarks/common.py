"""What every benchmark shares: the data set, a work folder, timing, process-tree memory, a summary.

The benchmarks call the library functions the stages call (or the stage scripts themselves) and
time them side by side with the alternative a notebook user would write, in the same run.
"""

import argparse
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_DATA = REPO.parent / "shared" / "data" / "chest-xray-pneumonia-224.zip"
DEFAULT_WORK = Path(os.environ.get("TLPIPE_BENCH_WORK", f"/tmp/tlpipe-bench-{os.getuid()}"))


def parser(description: str, data: Path = DEFAULT_DATA) -> argparse.ArgumentParser:
    """The options every benchmark takes; `data` is its default data set (the chest X-ray zip)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", type=Path, default=data, help=f"the data set's zip (default: {data})")
    p.add_argument("--work", type=lambda value: Path(value).expanduser().resolve(), default=DEFAULT_WORK,
                   help="scratch folder for extracted images and caches, reused between runs (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a small smoke run: fewer images, one round")
    return p


def check_data(path: Path) -> Path:
    path = path.expanduser().resolve()
    if not path.is_file():
        sys.exit(f"benchmark data not found: {path}\n"
                 f"Put {path.name} there (the data sets are described in ../shared/data/README.md), "
                 "or pass --data PATH.")
    return path


def machine() -> str:
    """A one-line name of the machine: CPU model, cores the process may use, GPU if any."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from tlpipe.jobs import usable_cores

    text = f"{model}, {usable_cores()} cores"
    try:
        import torch
        text += f", torch {torch.__version__.split('+')[0]} ({torch.get_num_threads()} threads)"
        if torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name(0)}"
        else:
            text += ", no GPU"
    except ImportError:
        pass
    return text


# ---------------------------------------------------------------- the data set, prepared once

def raw_folder(work: Path, data: Path) -> Path:
    """A raw folder as the download stage leaves it: a copy of the archive, untouched."""
    raw = work / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    copy = raw / data.name
    if copy.is_symlink():
        copy.unlink()
    if not copy.exists() or copy.stat().st_size != data.stat().st_size:
        shutil.copyfile(data, copy)
    return raw


def extracted_folder(work: Path, data: Path) -> Path:
    """The archive extracted to plain files, as a notebook user would have it (not timed)."""
    out = work / "extracted"
    done = out / ".done"
    if not done.exists():
        with zipfile.ZipFile(data) as zf:
            zf.extractall(out)
        done.touch()
    return out


def split_table(work: Path, data: Path):
    """data/split.csv as the split stage makes it (default split params), cached."""
    import pandas as pd

    from dataclasses import replace

    from tlpipe import params
    from tlpipe.data.raw import RawData
    from tlpipe.data.split import build_split, write_split_csv

    path = work / "split.csv"
    if not path.exists():
        cfg = replace(params.load(REPO / "params.yaml").split, group_regex=r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)")
        table, _ = build_split(RawData(raw_folder(work, data)), cfg)
        write_split_csv(table, path)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def cache_folder(work: Path, data: Path, size: int) -> Path:
    """data/cache as the resize stage makes it at `size` px, cached between runs."""
    from tlpipe.data.resize import build_cache
    from tlpipe.data.raw import RawData

    out = work / f"cache-{size}"
    if not (out / "classes.json").exists():
        print(f"[prep] building the uint8 cache at {size} px with the resize stage's code ...", flush=True)
        build_cache(split_table(work, data), RawData(raw_folder(work, data)), out, size, "squash")
    return out


# ---------------------------------------------------------------- measuring

class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def tree_anonymous(pid: int) -> int:
    """Anonymous memory of a process and its descendants, in bytes: the sum of their proportional
    shares (Pss_Anon of /proc/PID/smaps_rollup), so pages a forked worker shares with its parent
    count once. Memory-mapped file pages (the page cache) are not in it. 0 where Linux lacks it."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            for line in Path(f"/proc/{p.pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss_Anon:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
    return total


class PeakTreeRSS:
    """Samples the RSS of a process tree every `interval` s in a thread; `.peak` in bytes, and with
    `anonymous=True` also `.peak_anonymous` (tree_anonymous)."""

    def __init__(self, pid: int, interval: float = 0.02, anonymous: bool = False):
        self.pid, self.interval, self.peak, self.peak_anonymous = pid, interval, 0, 0
        self.anonymous = anonymous
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        samples = 0
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            if self.anonymous and samples % 5 == 0:  # smaps_rollup costs kernel time: every 5th sample
                self.peak_anonymous = max(self.peak_anonymous, tree_anonymous(self.pid))
            samples += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class GpuBusy:
    """The GPU's mean busy share (nvidia-smi's utilization.gpu, in %) over a `with` block, sampled
    every `interval` seconds from a thread; `percent` is None where nvidia-smi is not there."""

    def __init__(self, interval: float = 0.5, index: int = 0):
        self.interval, self.index = interval, index
        self.samples: list[float] = []
        self.percent: float | None = None
        self._stop = threading.Event()

    def _sample(self) -> None:
        command = ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            try:
                out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True).stdout
                self.samples.append(float(out.split()[0]))
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.percent = sum(self.samples) / len(self.samples) if self.samples else None


def run_measured(cmd: list[str], env: dict | None = None, cwd: Path | None = None,
                 anonymous: bool = False) -> tuple[str, float, int] | tuple[str, float, int, int]:
    """Run `cmd`; (stdout, wall seconds, peak RSS of its process tree in bytes), with `anonymous`
    also the peak anonymous memory of the tree (tree_anonymous). Raises on failure."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    with Timer() as t:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=full_env, cwd=cwd)
        with PeakTreeRSS(proc.pid, anonymous=anonymous) as rss:
            out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{out}\n{err[-3000:]}")
    return (out, t.seconds, rss.peak, rss.peak_anonymous) if anonymous else (out, t.seconds, rss.peak)


def result_line(stdout: str, tag: str = "RESULT") -> dict:
    """The last `RESULT {json}` line a child process printed."""
    import json

    for line in reversed(stdout.splitlines()):
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    raise RuntimeError(f"no {tag} line in:\n{stdout[-2000:]}")


def measure_child(script: str, args, kind: str, *extra: str) -> dict:
    """Run `script --child KIND` in a fresh process: its RESULT line plus the process's wall time,
    the peak RSS of its process tree, its peak anonymous memory (`peak_anonymous`, tree_anonymous)
    and images/s over the timed part."""
    cmd = [sys.executable, script, "--child", kind, "--data", str(args.data), "--work", str(args.work), *extra]
    out, wall, peak, anonymous = run_measured(cmd, anonymous=True)
    result = result_line(out)
    return result | {"wall": wall, "peak_rss": peak, "peak_anonymous": anonymous,
                     "rate": result["images"] / max(result["seconds"], 1e-9)}


# ---------------------------------------------------------------- the final summary

class Summary:
    """Collects figures and target checks; `print()` writes the block every benchmark ends with."""

    def __init__(self, title: str):
        self.title = title
        self.lines: list[str] = []
        self.checks: list[tuple[str, bool]] = []

    def figure(self, text: str) -> None:
        self.lines.append(text)

    def target(self, name: str, value: float, threshold: float, unit: str = "x", higher: bool = True,
               note: str = "") -> bool:
        ok = value >= threshold if higher else value <= threshold
        sign = ">=" if higher else "<="
        self.checks.append((f"{name}: {value:.3g}{unit} (target {sign} {threshold:g}{unit}){note}", ok))
        return ok

    def skipped(self, name: str, why: str) -> None:
        self.checks.append((f"{name}: not run ({why})", None))

    def print(self) -> int:
        bar = "=" * 78
        print(f"\n{bar}\n{self.title}\nmachine: {machine()}\n{bar}")
        for line in self.lines:
            print(line)
        if self.checks:
            print("-" * 78)
        for text, ok in self.checks:
            print(f"{'PASS' if ok else ('SKIP' if ok is None else 'FAIL')}  {text}")
        print(bar, flush=True)
        return 0 if all(ok is not False for _, ok in self.checks) else 1
