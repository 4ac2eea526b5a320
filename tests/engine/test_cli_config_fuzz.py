"""Fuzz of the training CLI's config keys: for every field of TrainConfig, wrong types, out-of-range
values and unknown keys end in one `dtc train-student: error: ...` line naming the key and exit 2,
never a traceback or an "internal error". In-process through the CLI's main, a seeded sample."""
from __future__ import annotations

import dataclasses
import random
import typing

import pytest

from dtc.cli.main import main
from dtc.engine.config import TrainConfig

# Strings the user may set to anything (paths); every other str field is a choice.
FREE_STRINGS = {"data.root", "data.masks", "data.spacing_csv", "run.out_dir", "flow.cache_dir"}
# Mappings forwarded to a component that checks its own keys.
CHECKED_MAPPINGS = {"data.synth", "model.kwargs", "model.taps", "loss", "flow.params"}

WRONG_TYPE = {
    int: ["abc", "[1, 2]", "{a: 1}", "1.5", "true", "''"],
    float: ["abc", "[1, 2]", "{a: 1}", "true", "''"],
    bool: ["maybe", "3", "[1]", "{a: 1}", "0.5"],
    str: ["[1, 2]", "{a: 1}", "3", "1.5"],
    dict: ["3", "abc", "[1, 2]", "true"],
}
OUT_OF_RANGE = {
    int: ["-1", "-7", "-100000"],
    float: [".nan", ".inf", "-.inf"],
    str: ["not-a-choice", "''"],
}


def _fields(cls=TrainConfig, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _fields(hint, f"{prefix}{f.name}.")
            continue
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        optional = origin is typing.Union
        base = next(a for a in args if a is not type(None)) if optional else hint
        if base is dict or typing.get_origin(base) is dict:
            base = dict
        yield prefix + f.name, base


def _cases(seed=0, per_field=3):
    rng = random.Random(seed)
    cases = []
    for key, base in _fields():
        pool = [f"{key}={v}" for v in WRONG_TYPE[base]]
        if base in OUT_OF_RANGE and key not in FREE_STRINGS:
            pool += [f"{key}={v}" for v in OUT_OF_RANGE[base]]
        if base is dict and key in CHECKED_MAPPINGS:
            pool += [f"{key}.no_such_setting=1"]
        if base is not dict:
            pool += [f"{key}.deeper=1"]  # a section key below a plain value
        cases += [(key, item) for item in rng.sample(pool, min(per_field, len(pool)))]
    sections = [key.split(".")[0] for key, _ in _fields() if "." in key]
    for section in sorted(set(sections)):
        cases.append((section, f"{section}.no_such_key_{rng.randrange(1000)}=1"))
    cases.append(("unknown", f"no_such_top_key_{rng.randrange(1000)}=1"))
    return cases


def test_every_field_is_covered():
    keys = {key for key, _ in _fields()}
    assert {"optim.lr", "data.max_windows", "run.threads", "model.kwargs", "teacher_checkpoint"} <= keys
    assert keys <= {key for key, _ in _cases()}


@pytest.fixture
def teacher_file(tmp_path):
    path = tmp_path / "teacher.pt"  # --dry-run checks it exists; nothing reads it
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize("seed", [0, 1])
def test_wrong_values_for_every_config_key_give_one_clear_line(seed, teacher_file, tmp_path, capsys):
    failures = []
    for key, override in _cases(seed):
        # The teacher and run folder come as overrides before the fuzzed one, so the fuzzed value wins.
        argv = ["train-student", "data.height=48", "data.width=64", f"teacher_checkpoint={teacher_file}",
                f"run.out_dir={tmp_path / 'run'}", override, "--dry-run"]
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse never sees these values; a SystemExit would be a bug
            code = f"SystemExit({exc.code})"
        captured = capsys.readouterr()
        err = captured.err.strip()
        leaf = key.split(".")[-1]
        ok = (code == 2 and len(err.splitlines()) == 1 and err.startswith("dtc train-student: error: ")
              and "Traceback" not in captured.out + err and (leaf in err or "no_such" in err))
        if not ok:
            failures.append(f"{override!r}: exit {code}, stderr {err[:300]!r}")
    assert not failures, "\n".join(failures)
