"""Progress bars are drawn on a terminal only, so logs of experiment runs hold no carriage-return lines."""
from __future__ import annotations

import io
import re

from dtc.progress import progress_bar
from tests.conftest import REPO_ROOT


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_is_silent_when_the_stream_is_a_file():
    log = io.StringIO()
    assert list(progress_bar(range(50), file=log, desc="train", mininterval=0)) == list(range(50))
    assert log.getvalue() == ""


def test_bar_is_drawn_on_a_terminal_unless_disabled():
    terminal = _Terminal()
    list(progress_bar(range(5), file=terminal, desc="train", mininterval=0))
    assert "\r" in terminal.getvalue() and "train" in terminal.getvalue()
    quiet = _Terminal()
    list(progress_bar(range(5), file=quiet, enabled=False))
    assert quiet.getvalue() == ""


def test_every_bar_goes_through_progress_bar():
    direct = [str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "python" / "dtc").rglob("*.py")
              if p.name != "progress.py" and re.search(r"^\s*(from tqdm|import tqdm)", p.read_text(), re.M)]
    assert not direct, f"use dtc.progress.progress_bar (terminal-only) in {direct}"
