"""What the split stage left out or grouped, and why: every skipped file by path, every duplicate."""

from dataclasses import dataclass, field


@dataclass
class SplitReport:
    skipped: list[dict] = field(default_factory=list)
    cross_split_duplicates: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    labels_without_file: list[str] = field(default_factory=list)
    empty_folders: list[str] = field(default_factory=list)
    ungrouped_files: int = 0
    too_small_for_near_duplicates: int = 0  # images below phash.MIN_SIDE: exact copies only are found
    group_key: dict = field(default_factory=dict)  # how subjects were found in file names (split.group_regex)
    carved_by_image: dict = field(default_factory=dict)  # {class: {groups, images}}: too few groups to carve
    fold: dict = field(default_factory=dict)  # {index, of}: the validation fold of k-fold cross-validation
    near_duplicate_pairs: list[tuple[str, str]] = field(default_factory=list)
    near_duplicate_search_s: float = 0.0  # the pHash search and thumbnail check, not the decoding

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append({"path": path, "reason": reason})
