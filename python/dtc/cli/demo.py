"""`dtc demo`: the README's main job."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run the end-to-end demo on embedded synthetic data",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    parser.set_defaults(func=run)


def run(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from dtc import ops

    # A smooth synthetic image and a rotational flow: the warped image must show the rotation.
    H, W = 128, 224
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    image = (torch.sin(xs / 9) * torch.cos(ys / 7) + ((xs - W / 2) ** 2 + (ys - H / 2) ** 2 < 40**2).float())
    angle = 0.15
    cx, cy = W / 2, H / 2
    flow = torch.stack([(xs - cx) - ((xs - cx) * torch.cos(torch.tensor(angle)) - (ys - cy) * torch.sin(torch.tensor(angle))),
                        (ys - cy) - ((xs - cx) * torch.sin(torch.tensor(angle)) + (ys - cy) * torch.cos(torch.tensor(angle)))])
    warped = ops.warp(image[None, None], flow[None])[0, 0]
    args.out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    for ax, img, title in zip(axes, [image, flow.norm(dim=0), warped], ["image", "|flow| (px)", "dtc.ops.warp(image, flow)"]):
        ax.imshow(img.numpy(), cmap="gray")
        ax.set_title(title)
        ax.axis("off")
    path = args.out / "warp.png"
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    tmp.replace(path)
    print(f"wrote {path}")
    return 0
