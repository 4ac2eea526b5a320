"""One bad-input call per process, to find which C++ error paths crash (a segfault, exit -11) instead of
raising. On the H200 machine (Ubuntu 24.04, GCC 13.3, Python 3.12) three bad-input tests killed their
pytest-xdist workers; here they all raise. Usage: python gpu_crash_probe.py CASE (no CASE: list them)."""
import sys

import torch

from dtc._extension import load

load()  # registers torch.ops.dtc
grey = torch.rand(1, 1, 40, 40) * 255
nan = grey.clone()
nan[0, 0, 3, 3] = float("nan")
FB = (0.5, 1, 9, 2, 5, 1.1, False, 0)
CASES = {
    # torch's own error from its own library: does any C++ exception crash here?
    "torch_own_error": lambda: torch.zeros(2) + torch.zeros(3),
    # our checks: a message of strings only, then messages that format a double, an int, sizes
    "farneback_nan_message": lambda: torch.ops.dtc.farneback(nan, grey, *FB),
    "farneback_double_in_message": lambda: torch.ops.dtc.farneback(grey * 1e28, grey, *FB),
    "warp_sizes_in_message": lambda: torch.ops.dtc.warp(torch.rand(1, 1, 4, 5), torch.rand(1, 2, 3, 5), "border"),
    "sunseg_sizes_in_message_pybind": lambda: load().sunseg_frame(torch.zeros(4, 5, dtype=torch.float64),
                                                                  torch.zeros(4, 4, dtype=torch.uint8)),
    "consistency_int_in_message": lambda: torch.ops.dtc.temporal_consistency(
        torch.rand(2, 1, 1, 6, 7), torch.rand(2, 1, 3, 6, 7), torch.rand(2, 1, 2, 6, 7), None, [], 1.0, "abs_sum",
        False, False, False),
}


def loaded_runtimes() -> list[str]:
    """The C++ runtime and unwinder copies this process has mapped: two libstdc++ or libgcc_s, or an
    LLVM libunwind, would make an exception's unwinding depend on which copy a library binds to."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "/" in line}
    return sorted(p for p in paths if any(k in p for k in ("libstdc++", "libgcc_s", "unwind", "libc++", "gomp")))


if __name__ == "__main__":
    if sys.argv[1:] == ["--maps"]:
        print("\n".join(loaded_runtimes()))
        raise SystemExit(0)
    if len(sys.argv) < 2:
        print(" ".join(CASES))
        raise SystemExit(0)
    name = sys.argv[1]
    try:
        CASES[name]()
    except (RuntimeError, ValueError, TypeError) as e:  # the expected outcome: the check's own exception
        print(f"{name}: raised {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        raise SystemExit(0)
    print(f"{name}: did NOT raise")
    raise SystemExit(1)
