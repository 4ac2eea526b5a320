"""Window-batch inputs for the loss tests: random, empty/all-foreground masks, zero and huge flows."""
from __future__ import annotations

import torch

CASES = ["random", "empty", "allfg", "zeroflow", "outside"]


def make_case(case="random", B=2, T=3, H=12, W=14, Cl=5, local_size=None, Cg=7, global_size=(3, 4),
              dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    hl, wl = local_size or (H, W)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    z = 2.0 * randn(B, T, 1, H, W)
    if case == "empty":
        z = torch.full((B, T, 1, H, W), -3.0, dtype=torch.float64)  # every P equal: nothing above any threshold
    elif case == "allfg":
        z = 6.0 + 0.1 * randn(B, T, 1, H, W)
    flows = 2.5 * randn(B, T, 2, H, W)
    if case == "zeroflow":
        flows = torch.zeros(B, T, 2, H, W, dtype=torch.float64)
    elif case == "outside":
        flows = 1e3 * torch.sign(randn(B, T, 2, H, W)) + randn(B, T, 2, H, W)
    # Multiples of 1/256 keep p - F(p) exact in float32, so float32 runs can be held to the float64
    # oracle evaluated on the same values.
    flows = torch.round(flows * 256) / 256
    data = dict(
        z=z,
        loc=randn(B, T, Cl, hl, wl),
        glob=randn(B, T, Cg, *global_size),
        zt=2.0 * randn(B, T, 1, H, W),
        y=torch.rand(B, T, 1, H, W, generator=g, dtype=torch.float64),
        images=torch.rand(B, T, 3, H, W, generator=g, dtype=torch.float64),
        flows=flows,
        flows_bw=torch.round((-flows + 0.7 * randn(B, T, 2, H, W)) * 256) / 256,
    )
    return {k: v.to(device=device, dtype=dtype) for k, v in data.items()}
