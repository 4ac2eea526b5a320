"""Progress bars, drawn only on a terminal.

Every progress bar in dtc comes from :func:`progress_bar`. A bar redraws itself with carriage returns,
which turns the log file of an experiment run (stderr redirected to a file) into one enormous line, so
a bar is drawn only when its stream is a terminal; ``enabled=False`` turns it off everywhere.
"""
from __future__ import annotations

import sys
from typing import Iterable, Optional, TextIO


def progress_bar(iterable: Optional[Iterable] = None, *, enabled: bool = True, file: Optional[TextIO] = None, **kwargs):
    """A ``tqdm`` bar over ``iterable`` (or a manual one with ``total=``), silent unless ``file`` is a tty."""
    from tqdm import tqdm

    stream = sys.stderr if file is None else file
    isatty = getattr(stream, "isatty", None)
    on_terminal = bool(isatty and isatty())
    return tqdm(iterable, file=stream, disable=not (enabled and on_terminal), **kwargs)
