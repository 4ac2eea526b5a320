"""dtc.memory: the heap settings of dtc's own processes."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

GLIBC = platform.libc_ver()[0] == "glibc"


def _run(code, **env):
    import os

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env},
                          timeout=120)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_freed_activations_stay_in_the_heap():
    # A 64 MB tensor freed and allocated again: with glibc's defaults (blocks over 32 MB are always
    # mmap'ed) it comes back from the kernel and page-faults on the next touch; with the settings it is
    # reused from the heap.
    code = """
import resource, sys, torch
from dtc.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[-1] == "on" else False
for i in range(40):
    a = torch.ones(16 << 20); del a
    if i == 29:  # glibc's heap settles after the first allocations
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(applied, after - before)
"""
    on = _run(code.replace('sys.argv[-1] == "on"', "True"))
    off = _run(code.replace('sys.argv[-1] == "on"', "False"))
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    applied_on, faults_on = on.stdout.split()
    _, faults_off = off.stdout.split()
    assert applied_on == "True"
    # 10 allocations of 64 MB = 10 x 16384 pages faulted in again by default; none with the settings.
    assert int(faults_off) > 10 * 16384 * 0.9
    assert int(faults_on) < 1000


def test_opt_out_keeps_the_defaults():
    r = _run("from dtc.memory import keep_freed_memory; print(keep_freed_memory())", DTC_MALLOC="default")
    assert r.returncode == 0 and r.stdout.strip() == "False"
