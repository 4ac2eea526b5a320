from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
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

