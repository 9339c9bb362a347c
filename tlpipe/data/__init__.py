"""From a source to cached arrays: download, raw folders and archives, the split, decoding, the cache."""

SPLITS = ("train", "val", "test")
