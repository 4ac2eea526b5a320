"""How every `dtc` command ends when something goes wrong: one line on stderr and a non-zero exit.

* A user error (a bad value, a missing or unreadable file, a refused checkpoint, a full or read-only
  disk) prints ``dtc COMMAND: error: ...`` naming the argument or file and the fix; exit 2.
* Ctrl-C prints ``dtc COMMAND: interrupted; ...`` saying what was kept; exit 130 (the shell's code
  for SIGINT).
* Anything else is a dtc bug: one line with the exception and a pointer to ``--debug``; exit 1.
* ``dtc --debug COMMAND ...`` re-raises instead, so the full traceback is shown.

This module is the only place the CLI turns exceptions into exit codes.
"""
from __future__ import annotations

import errno
import sys
from typing import Callable

EXIT_USER_ERROR = 2
EXIT_BUG = 1
EXIT_INTERRUPTED = 130

# What an interrupted command leaves behind, by command: every file dtc writes is written atomically,
# so nothing half-written is ever left; training keeps the last finished epoch.
_KEPT = {
    "train-teacher": "the run folder keeps last.pt from the last finished epoch; continue with --resume",
    "train-student": "the run folder keeps last.pt from the last finished epoch; continue with --resume",
    "experiment": "finished runs and each run's last finished epoch are kept; the same command continues",
    "demo": "finished stages are kept; the same command continues",
    "infer": "frames already written are kept (whole files only)",
}


def one_line(text: str, limit: int = 600) -> str:
    """Collapse a message to one line, so a multi-line library message never turns into several."""
    line = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _os_error_message(exc: OSError) -> str:
    name = exc.filename or ""
    if exc.errno == errno.ENOSPC:
        return (f"no space left on the device while writing {name or 'an output file'}; files dtc wrote before "
                "(e.g. a run's last.pt, which holds the last finished epoch) are intact: free space and rerun "
                "(training: add --resume)")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {name or 'the output'} ({exc.strerror}): choose a writable folder (e.g. with --out)"
    if exc.errno == errno.ENOENT:
        return f"file or folder not found: {name}" if name else one_line(exc)
    return f"{exc.strerror or type(exc).__name__}: {name}" if name else one_line(exc)


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message for an exception caused by the user's input, or None for a dtc bug."""
    from dtc.engine.checkpoint import CheckpointError

    if isinstance(exc, (ValueError, CheckpointError, TypeError)) and not isinstance(exc, UnicodeError):
        # dtc raises ValueError (ConfigError, CheckpointError) for bad input; TypeErrors that reach
        # here come from validation of a user-given value, e.g. an ill-typed network kwarg.
        return one_line(exc)
    if isinstance(exc, FileNotFoundError) and not exc.filename:
        return one_line(exc)
    if isinstance(exc, OSError):
        return _os_error_message(exc)
    return None


def run_command(func: Callable, args, command: str, *, debug: bool = False) -> int:
    """Run ``func(args)``; map what it raises to one line and an exit code (see the module docstring)."""
    if debug:
        return int(func(args) or 0)
    prefix = f"dtc {command}"
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        kept = _KEPT.get(command, "nothing half-written was left (dtc writes whole files only)")
        print(f"{prefix}: interrupted; {kept}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001  (the CLI's one place for turning errors into exit codes)
        message = user_error_message(exc)
        if message is not None:
            print(f"{prefix}: error: {message}", file=sys.stderr)
            return EXIT_USER_ERROR
        print(f"{prefix}: internal error ({type(exc).__name__}: {one_line(exc, 300)}); this is a dtc bug: rerun "
              "with dtc --debug for the traceback and report it", file=sys.stderr)
        return EXIT_BUG
