"""download: fetch `data.source` into data/raw/ as fetched (archives stay archives), and record the
data's identity in metrics/data.json."""

import sys
from pathlib import Path

from tlpipe import params
from tlpipe.atomic import write_json
from tlpipe.data.identity import RECORD, describe, names_no_version, recorded_kaggle_version
from tlpipe.data.sources import fetch
from tlpipe.stage import run

RAW = Path("data/raw")


def main() -> None:
    data = params.load().data
    source = data.source
    details = fetch(source, RAW, data.sha256, recorded_kaggle_version(source))
    identity = describe(RAW, source, **details)
    write_json(RECORD, identity)
    if names_no_version(source):
        print(f"download: {source} names no version; version {details['kaggle_version']} was fetched and "
              f"recorded in {RECORD}. Pin it in params.yaml: data.source: {source}/{details['kaggle_version']}",
              file=sys.stderr)
    print(f"download: {identity['files']} files, {identity['bytes']:,} bytes, content "
          f"{identity['content_sha256'][:12]}", file=sys.stderr)


if __name__ == "__main__":
    run(main)
