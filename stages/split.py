"""split: data/raw/ -> data/split.csv (path, label, split, group) + metrics/split.json."""

from tlpipe import params
from tlpipe.atomic import atomic_path, write_json
from tlpipe.data.raw import RawData
from tlpipe.data.split import (build_split, say_group_key, split_metrics, warn_carved_by_image, warn_leaks,
                              write_split_csv)
from tlpipe.stage import run, wall_s


def main() -> None:
    p = params.load()
    raw = RawData("data/raw", p.data.max_archive_gb, p.data.max_archive_entries)
    table, report = build_split(raw, p.split)
    with atomic_path("data/split.csv") as tmp:
        write_split_csv(table, tmp)
    metrics = split_metrics(table, report, p.split.near_duplicate_similarity) | {"wall_s": wall_s()}
    write_json("metrics/split.json", metrics)
    warn_leaks(metrics)
    say_group_key(metrics["group_key"])
    warn_carved_by_image(metrics["carved_by_image"])
    print(f"split: {metrics['total']} ({metrics['skipped_count']} files skipped, see metrics/split.json)")


if __name__ == "__main__":
    run(main)
