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
# Real-data fixtures whose licences allow redistribution (HC18 stills, CC BY 4.0; PySODMetrics pairs, MIT)
# live in the repository, so a clone runs their tests; tests/fixtures/README.md has their attributions.
FIXTURES = REPO_ROOT / "tests" / "fixtures"
# The CVC-ColonDB masks behind the SUN-SEG toolbox table are for research use only and may not be
# redistributed: they are read from the folder this variable names, else from the `shared/` folder beside
# the checkout (where CI has it).
SUNSEG_FIXTURES_ENV = "DTC_SUNSEG_FIXTURES"
SUNSEG_FIXTURES_DEFAULT = REPO_ROOT.parent / "shared" / "fixtures" / "sunseg-metrics-cvc300"
SUNSEG_FIXTURES_SOURCE = ("the GewelsJI/VPS repository at commit a718e53: eval/data/GT/CVC-ColonDB-300/GT/{7,8} "
                          "and eval/data/Pred/2019-TPAMI-COSNet/CVC-ColonDB-300/{7,8}, plus "
                          "eval/eval-result/2019-TPAMI-COSNet/CVC-ColonDB-300_eval.txt saved as "
                          "reference_result_a718e53.txt")

CUDA_AVAILABLE = torch.cuda.is_available()


def randomise_weights_(model, seed: int = 1):
    """Random weights and batch-norm statistics in place, so that normalisation and folding are not
    identities in a test (fresh nets have unit variances and zero means); returns the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(torch.randn(t.shape, generator=g) / max(1, t[0].numel()) ** 0.5)
    return model


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device (none visible)")
    for item in items:
        if "cuda" in item.keywords and not CUDA_AVAILABLE:
            item.add_marker(skip_cuda)


@pytest.fixture
def fixtures_dir() -> Path:
    """The redistributable real-data fixtures: part of a clone, left out of source distributions."""
    if not FIXTURES.is_dir():
        pytest.skip(f"{FIXTURES} is not in source distributions; run the fixture tests from a clone")
    return FIXTURES


def sunseg_fixtures_path() -> Path:
    """Where the SUN-SEG (CVC-ColonDB-300) fixture is looked for: ``$DTC_SUNSEG_FIXTURES``, else shared/."""
    import os

    named = os.environ.get(SUNSEG_FIXTURES_ENV)
    return Path(named) if named else SUNSEG_FIXTURES_DEFAULT


def sunseg_fixtures_or_skip() -> Path:
    """The CVC-ColonDB-300 masks, predictions and toolbox table; skips with directions when absent."""
    root = sunseg_fixtures_path()
    if not (root / "GT").is_dir() or not (root / "Pred").is_dir():
        pytest.skip(f"SUN-SEG fixture not found at {root}. It may not be redistributed; get it from "
                    f"{SUNSEG_FIXTURES_SOURCE}, and point {SUNSEG_FIXTURES_ENV} at the folder holding GT/ and Pred/")
    return root


@pytest.fixture
def sunseg_fixtures_dir() -> Path:
    return sunseg_fixtures_or_skip()



def probe_video(path) -> dict:
    """What a player sees in ``path``: codec and pixel format as ffmpeg names them, (width, height) and the
    number of decodable frames (every frame decoded, through the ffmpeg in imageio-ffmpeg's wheel)."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    frames = sum(1 for _ in reader)
    return {"codec": meta["codec"].split()[0], "pix_fmt": meta["pix_fmt"].split("(")[0], "size": tuple(meta["size"]),
            "frames": frames}
