"""Diagnostics go through stdlib logging: library code never prints; the command line shows INFO on stdout
and warnings on stderr; status lines of training reach a log handler instead of the terminal."""
from __future__ import annotations

import ast
import logging

from tests.conftest import REPO_ROOT


def test_library_code_does_not_print():
    # dtc.cli prints the results a command exists for; dtc.bench modules are `dtc bench` commands printing tables.
    package = REPO_ROOT / "python" / "dtc"
    offenders = []
    for path in package.rglob("*.py"):
        if path.relative_to(package).parts[0] in ("cli", "bench"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert not offenders, offenders


def test_cli_logging_prints_info_on_stdout_and_warnings_on_stderr(capsys):
    from dtc.log import _ConsoleHandler, use_cli_logging

    use_cli_logging()
    use_cli_logging()
    logger = logging.getLogger("dtc")
    try:
        assert sum(isinstance(h, _ConsoleHandler) for h in logger.handlers) == 1
        logging.getLogger("dtc.engine.stages").info("teacher: training ...")
        logging.getLogger("dtc.io").warning("imageio-ffmpeg is not installed")
        logging.getLogger("dtc.io").debug("not shown")
        said = capsys.readouterr()
        assert said.out == "teacher: training ...\n"
        assert said.err == "warning: imageio-ffmpeg is not installed\n"
    finally:
        for h in [h for h in logger.handlers if isinstance(h, _ConsoleHandler)]:
            logger.removeHandler(h)
        logger.setLevel(logging.NOTSET)


def test_training_status_goes_to_logging_not_the_terminal(tiny_config, capsys, caplog):
    from dtc.engine.stages import train_stage

    cfg = tiny_config("stage=teacher", "optim.epochs=1", "run.progress=true", out="t")
    with caplog.at_level(logging.INFO, logger="dtc"):
        assert train_stage(cfg, label="teacher") == "trained"
        assert train_stage(cfg, label="teacher") == "skipped"
    said = capsys.readouterr()
    assert "teacher" not in said.out and "epoch=" not in said.out
    messages = [(r.name, r.getMessage()) for r in caplog.records]
    assert ("dtc.engine.stages", "teacher: training ...") in messages
    assert any(name == "dtc.engine.trainer" and message.startswith("[teacher] epoch=1") for name, message in messages)
    assert any(message.startswith("teacher: already trained") for _, message in messages)
