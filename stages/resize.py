"""resize: decode every image of data/split.csv once into uint8 arrays in data/cache/."""

from pathlib import Path

from tlpipe import params
from tlpipe.atomic import write_json
from tlpipe.data.cache import read_csv
from tlpipe.errors import TlpipeError
from tlpipe.data.resize import auto_size, build_cache, decode_pool, source_side
from tlpipe.data.raw import RawData
from tlpipe.stage import run, wall_s


def main() -> None:
    p = params.load()
    cfg = p.resize
    with decode_pool(cfg.workers) as decoders:  # forked before the table is read: see tlpipe.data.resize
        table = read_csv("data/split.csv", dtype=str, usecols=["path", "label", "split"])
        raw = RawData("data/raw", p.data.max_archive_gb, p.data.max_archive_entries)
        size, chosen = cfg.size, {}
        name = p.backbone.name
        if size == "auto":
            from tlpipe.model.backbones import input_size, minimum_input_size  # torch and timm load only here

            source = source_side(raw, table["path"].tolist())
            size = auto_size(input_size(name), source, minimum_input_size(name))
            chosen = {"size_auto": {"backbone_input_size": input_size(name), "source_median_side": source,
                                    "size": size}}
            print(f"resize: size auto = {size} px (backbone {name} {chosen['size_auto']['backbone_input_size']} "
                  f"px, source images' median side {source} px)")
        elif size < 224:  # every backbone takes 224 px; below, check the one named before caching
            from tlpipe.model.backbones import minimum_input_size

            if size < (least := minimum_input_size(name)):
                raise TlpipeError(f"resize.size: {size} px is below the smallest input {name} takes ({least} px); "
                                  f"set resize.size: {least} or more, or auto.")
        metrics = build_cache(table, raw, Path("data/cache"), size, cfg.mode, cfg.workers,
                              cfg.max_unreadable_fraction, cfg.contrast, cfg.shard_mb, decoders) | chosen
    write_json("metrics/resize.json", metrics | {"wall_s": wall_s()})
    print(f"resize: {metrics['images']} cached, {metrics['unreadable_count']} unreadable")


if __name__ == "__main__":
    run(main)
