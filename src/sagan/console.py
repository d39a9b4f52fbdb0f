"""Messages to the user: one place, so that they go through tqdm and never break a progress bar."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def _quiet() -> bool:
    """Under torchrun only rank 0 talks, so that each line appears once."""
    return os.environ.get("RANK", "0") != "0"


def info(msg: str) -> None:
    """An informational line on stderr."""
    if not _quiet():
        tqdm.write(msg, file=sys.stderr)


def warn(msg: str) -> None:
    """A warning line on stderr."""
    if not _quiet():
        tqdm.write(f"warning: {msg}", file=sys.stderr)


class UserError(Exception):
    """A mistake the user can fix. The CLI prints its message as one line, without a traceback."""
