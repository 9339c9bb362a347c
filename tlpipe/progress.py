"""Progress bars that stay sane when the output is not a terminal.

On a terminal: tqdm as usual. Elsewhere (CI, nohup, a queued `dvc exp run`, a log file) tqdm's
carriage-return redraws would pile up into one huge line; there each bar writes a plain line at
every 10% of its total (or at every update when it has no total, such as a download of unknown
size: then at most one a minute), and a last one when it closes.
"""

import sys

from tqdm import tqdm

STEPS = 10


class _Lines:
    """A stream for tqdm that turns each redraw into one line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable=None, *, total: int | float | None = None, stream=None, terminal_only: bool = False,
             **kwargs) -> tqdm:
    """A tqdm bar on `stream` (stderr). `terminal_only`: none at all where the output is not a terminal
    (for a loop that already logs its own line when it ends, such as a training epoch)."""
    stream = stream if stream is not None else sys.stderr
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(iterable, total=total, file=stream, **kwargs)
    if terminal_only:
        return tqdm(iterable, total=total, disable=True)
    every = dict(miniters=max(1, int(total // STEPS)), mininterval=0) if total else dict(mininterval=60)
    return tqdm(iterable, total=total, file=_Lines(stream), ascii=True, maxinterval=float("inf"),
                dynamic_ncols=False, ncols=100, **every, **kwargs)
