from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# Test modules are imported as `tests.<dir>.<module>` (importlib mode). Processes started with
# multiprocessing's spawn re-import a worker function by that name, so the folder holding `tests/`
# must be importable even when pytest runs from inside tests/ (as `make test` does). The package
# itself lives in python/dtc, so this does not shadow the installed dtc.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
# CI clones the project with the read-only `shared/` folder beside the checkout.
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"

CUDA_AVAILABLE = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device (none visible)")
    for item in items:
        if "cuda" in item.keywords and not CUDA_AVAILABLE:
            item.add_marker(skip_cuda)


@pytest.fixture
def fixtures_dir() -> Path:
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"real-data fixtures not found at {SHARED_FIXTURES} (the shared/ folder beside the checkout)")
    return SHARED_FIXTURES

