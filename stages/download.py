"""download: fetch `data.source` into data/raw/ as fetched (archives stay archives)."""

from pathlib import Path

from tlpipe import params
from tlpipe.data.sources import fetch
from tlpipe.stage import run


def main() -> None:
    data = params.load()["data"]
    fetch(data["source"], Path("data/raw"))


if __name__ == "__main__":
    run(main)
