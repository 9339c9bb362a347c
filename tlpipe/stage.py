"""What every stage script shares: a clean exit on user errors and interrupts, the wall time it
reports, and the run record mirrored beside its outputs."""

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tlpipe.errors import TlpipeError, user_message
from tlpipe.records import mirror

_STARTED = time.monotonic()
INTERRUPTED = "interrupted: partial outputs were removed; run `dvc repro` again."
BATCH_SIZE_KEY = {"extract_features": "features.batch_size", "finetune": "finetune.batch_size",
                  "evaluate": "evaluate.batch_size"}


def wall_s() -> float:
    """Seconds since the stage script started (its imports aside): the wall time it reports."""
    return round(time.monotonic() - _STARTED, 1)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _child_signals() -> None:
    # Forked helpers (resize's decoding pool) leave Ctrl-C to the stage, which stops them, and
    # die on the SIGTERM the pool sends them instead of raising KeyboardInterrupt tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def out_of_memory_message(error: BaseException, script: str) -> str:
    """Which batch size to lower, and to what, for the stage that ran out of GPU memory."""
    key = BATCH_SIZE_KEY.get(Path(script).stem)
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if key is None:
        return f"out of GPU memory ({first_line}). Lower the batch size of this stage in params.yaml."
    try:
        from tlpipe import params

        now = params.load().value(key)
        advice = f"try {key}: {max(1, now // 2)} (now {now})"
    except TlpipeError:
        advice = f"lower {key}"
    return f"out of GPU memory ({first_line}); {advice} in params.yaml, or set its device to cpu."


def run(main: Callable[[], None]) -> None:
    """Call a stage's main(); a TlpipeError is shown as one message, without a traceback.

    SIGTERM (a job scheduler, `kill`) is handled like Ctrl-C, so partial outputs are removed.
    On success the stage's Git-tracked outputs are copied to their cached records (tlpipe.records).
    """
    signal.signal(signal.SIGTERM, _interrupt)
    os.register_at_fork(after_in_child=_child_signals)
    try:
        main()
        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 alone writes (tlpipe.distributed)
            mirror(Path(sys.argv[0]).stem.replace("_", "-"))
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
    except Exception as error:
        if type(error).__name__ == "OutOfMemoryError":  # torch's, without importing torch here
            message = out_of_memory_message(error, sys.argv[0])
        else:
            message = user_message(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
