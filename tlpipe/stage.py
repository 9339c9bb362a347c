"""What every stage script shares: params loading and a clean exit on user errors."""

import sys
from collections.abc import Callable

from tlpipe.errors import TlpipeError


def run(main: Callable[[], None]) -> None:
    """Call a stage's main(); a TlpipeError is shown as one message, without a traceback."""
    try:
        main()
    except TlpipeError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: partial outputs were removed; run `dvc repro` again.", file=sys.stderr)
        sys.exit(130)
