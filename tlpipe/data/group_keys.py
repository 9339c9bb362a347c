"""Subject keys in file names: the patient, lesion or video that several images share.

`person1284_virus_2207.jpeg`, `IM-0507-0001.jpeg`, `NORMAL2-IM-0351-0001.jpeg` and
`patient042_slice17.png` carry the subject in a leading part of the name. Names are sorted by
layout (the pattern of letters, digits and separators), and within a layout the shortest leading
part that holds a digit is taken as the key when it behaves like a subject: shared by several
files but not by all, no subject holding a large share of the files, and (nearly) every subject's
images of one class. Names without a key (`0010.png`, Fruits-360's `r_120_100.jpg`, whose leading
parts are rotation angles shared across classes) give none. The keys found are written as the
regular expression `split.group_regex` would take, so the choice can be read, printed and pinned.
"""

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import PurePosixPath

SEPARATOR = re.compile(r"([_\-. ]+)")
RUN = re.compile(r"[A-Za-z]+|\d+|[^A-Za-z\d]+")
MIN_FILES = 20            # a layout with fewer files says too little
MAX_SUBJECT_SHARE = 0.05  # no subject holds more than this share of its layout's files
MIN_SHARED = 1.25         # files per key, on average: keys must be shared
MIN_PURITY = 0.9          # share of multi-image subjects whose images are all of one class


@dataclass(frozen=True)
class GroupKey:
    regex: str
    files: int       # files whose name carries a key
    groups: int      # subjects found
    examples: list   # (key, images) of the largest subjects


def _layout(parts: list[str]) -> str:
    return "".join("9" if p.isdigit() else "a" if p.isalpha() else p if SEPARATOR.fullmatch(p) else "x"
                   for part in parts for p in RUN.findall(part))


def _pattern(prefixes: list[list[str]]) -> str:
    """A regex for the leading parts `prefixes` (each a list of runs): constant runs literal, others
    by their kind."""
    out = []
    for column in zip(*prefixes):
        if len(set(column)) == 1:
            out.append(re.escape(column[0]))
        else:
            out.append(r"\d+" if column[0].isdigit() else "[A-Za-z]+" if column[0].isalpha() else re.escape(column[0]))
    return "".join(out)


def find_group_key(paths: list[str], labels: list[str]) -> GroupKey | None:
    """The subject key the file names of `paths` carry, or None."""
    by_layout: dict[str, list[tuple[list[str], str]]] = defaultdict(list)
    for path, label in zip(paths, labels):
        parts = SEPARATOR.split(PurePosixPath(path).stem)
        by_layout[_layout(parts)].append((parts, label))
    patterns, subjects = [], Counter()
    for members in by_layout.values():
        if len(members) < MIN_FILES:
            continue
        tokens = (len(members[0][0]) + 1) // 2  # parts alternate token, separator, token...
        for n in range(1, tokens):
            prefixes = ["".join(parts[: 2 * n - 1]) for parts, _ in members]
            if any(c.isdigit() for c in prefixes[0]) and _subject_like(prefixes, [label for _, label in members]):
                patterns.append(_pattern([RUN.findall(prefix) for prefix in prefixes]))
                subjects.update(prefixes)
                break
    if not patterns:
        return None
    regex = "^(" + "|".join(sorted(set(patterns), key=len, reverse=True)) + r")(?:[_\-. ]|$)"
    return GroupKey(regex, sum(subjects.values()), len(subjects), subjects.most_common(3))


def _subject_like(prefixes: list[str], labels: list[str]) -> bool:
    counts = Counter(prefixes)
    if len(counts) < 2 or len(prefixes) / len(counts) < MIN_SHARED:
        return False
    if max(counts.values()) > max(2, MAX_SUBJECT_SHARE * len(prefixes)):
        return False
    classes: dict[str, set] = defaultdict(set)
    for prefix, label in zip(prefixes, labels):
        classes[prefix].add(label)
    shared = [prefix for prefix, n in counts.items() if n > 1]
    return sum(len(classes[p]) == 1 for p in shared) >= MIN_PURITY * len(shared)
