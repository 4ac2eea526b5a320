"""Loading the compiled core with errors that say how to fix them."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def load():
    # torch must be imported first: dtc._C links against libtorch and registers its ops with
    # torch's dispatcher when loaded.
    import torch

    try:
        from dtc import _C
    except ImportError as exc:
        msg = str(exc)
        hint = (
            "dtc's compiled core (dtc._C) could not be imported. Build it against the torch you run: "
            "`pip install --no-build-isolation .` (or `make install`)."
        )
        if "undefined symbol" in msg:
            hint += (
                f" The error names an undefined symbol, which means dtc._C was built against a different "
                f"torch than the installed {torch.__version__}; rebuild it."
            )
        raise ImportError(f"{hint}\nOriginal error: {msg}") from exc
    compiled_with = _C.build_info()["torch_version"]
    if compiled_with.split("+")[0].rsplit(".", 1)[0] != torch.__version__.split("+")[0].rsplit(".", 1)[0]:
        raise ImportError(
            f"dtc._C was built against torch {compiled_with} but torch {torch.__version__} is installed; "
            "rebuild dtc with `pip install --no-build-isolation .`"
        )
    import dtc.ops._fake  # noqa: F401  (fake kernels for torch.compile / opcheck)

    return _C
