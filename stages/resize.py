"""resize: decode every image of data/split.csv once into uint8 arrays in data/cache/."""

from pathlib import Path


from tlpipe import params
from tlpipe.atomic import write_json
from tlpipe.data.cache import read_csv
from tlpipe.data.resize import build_cache
from tlpipe.data.raw import RawData
from tlpipe.stage import run, wall_s


def main() -> None:
    p = params.load()
    cfg = p["resize"]
    table = read_csv("data/split.csv", dtype=str, usecols=["path", "label", "split"])
    raw = RawData("data/raw", p["data"]["max_archive_gb"], p["data"]["max_archive_entries"])
    metrics = build_cache(table, raw, Path("data/cache"), cfg["size"], cfg["mode"], cfg["workers"],
                          cfg["max_unreadable_fraction"], cfg["contrast"], cfg["shard_mb"])
    write_json("metrics/resize.json", metrics | {"wall_s": wall_s()})
    print(f"resize: {metrics['images']} cached, {metrics['unreadable_count']} unreadable")


if __name__ == "__main__":
    run(main)
