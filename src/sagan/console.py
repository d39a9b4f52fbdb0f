"""Messages to the user: one place, so that they go through tqdm and never break a progress bar."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def info(msg: str) -> None:
    """An informational line on stderr."""
    tqdm.write(msg, file=sys.stderr)


def warn(msg: str) -> None:
    """A warning line on stderr."""
    tqdm.write(f"warning: {msg}", file=sys.stderr)


class UserError(Exception):
    """A mistake the user can fix. The CLI prints its message as one line, without a traceback."""
