"""Which GPUs a build's CUDA architecture list serves (dtc.cuda_arch_supported), checked before training."""
import pytest

import dtc


@pytest.mark.parametrize("archs, capability, ok", [
    ("90", (9, 0), True),          # sm_90 code
    ("90", (10, 0), True),         # compute_90 PTX, compiled for a newer GPU
    ("90", (8, 0), False),         # neither runs on an older GPU: the "no kernel image" failure
    ("80-real", (8, 6), True),     # same major, higher minor runs sm_80 code
    ("80-real", (9, 0), False),    # code only, no PTX for another major
    ("86-real", (8, 0), False),
    ("86-virtual", (9, 0), True),  # PTX only
    ("86-virtual", (8, 0), False),
    ("80-real,90", (8, 9), True),
    ("", (9, 0), False),           # a CPU-only build
])
def test_cuda_arch_supported(archs, capability, ok):
    assert dtc.cuda_arch_supported(capability, archs) is ok
