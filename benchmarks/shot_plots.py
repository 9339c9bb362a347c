"""Screenshot of `dvc plots show` (and of reports/summary.html) in headless Chromium, network unused.

Run in a project that has been through `dvc repro`; Debian's `chromium` package is enough
(`apt-get install chromium`). Prints what the page holds and where the PNGs are, to look at:

    python benchmarks/shot_plots.py --project . --out /tmp/plots-shot
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--virtual-time-budget=20000"]


def chromium(page: Path, *args: str) -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                              capture_output=True, text=True, timeout=300).stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", type=Path, default=Path("."))
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "tlpipe-plots-shot")
    args = p.parse_args()
    project, out = args.project.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dvc", "plots", "show", "-o", str(out / "dvc_plots")], cwd=project, check=True,
                   capture_output=True)
    page = out / "dvc_plots" / "index.html"
    html = page.read_text(encoding="utf-8")
    remote = re.findall(r"<script[^>]*\bsrc\s*=\s*[\"']?\s*(?:https?:)?//[^>]*>", html)
    dom = chromium(page, "--dump-dom")
    chromium(page, "--window-size=1600,3600", f"--screenshot={out / 'plots.png'}")
    print(f"page: {page} ({len(html) / 1e6:.1f} MB), remote scripts: {len(remote)}, "
          f"vega inline: {'window.vegaEmbed=' in html}")
    drawn = dom.count('role="graphics-document"')
    print(f"charts drawn by Chromium: {drawn}")
    print(f"screenshot: {out / 'plots.png'}")
    summary = project / "reports" / "summary.html"
    if summary.is_file():
        chromium(summary, "--window-size=1300,2400", f"--screenshot={out / 'summary.png'}")
        print(f"summary page screenshot: {out / 'summary.png'}")
    return 0 if not remote else 1


if __name__ == "__main__":
    sys.exit(main())
