"""`dtc data synth` (write a simulated TRUS-V dataset), `dtc data synth3d` (simulated NIfTI volumes) and `dtc data preview` (a picture of the data)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 256x448 (HxW), got {text!r}") from None
    return h, w


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"split must be three fractions like 0.7,0.15,0.15, got {text!r}") from None
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f"split must be three fractions like 0.7,0.15,0.15, got {text!r}")
    return vals


def _add_sim_options(p: argparse.ArgumentParser, frames: int) -> None:
    p.add_argument("--frames", type=int, default=frames, help="frames per video")
    p.add_argument("--size", type=_size, default=(256, 448), help="HxW (default 256x448)")
    p.add_argument("--views", default="axial,sagittal", help="comma-separated: axial, sagittal")
    p.add_argument("--motion", type=float, default=1.0, help="motion strength (0 static, <= ~2)")
    p.add_argument("--shadow-rate", type=float, default=1.0, help="mean calcifications (shadows) per video")
    p.add_argument("--noise", type=float, default=1.0, help="electronic noise level (relative)")
    p.add_argument("--seed", type=int, default=0)


def _config(args):
    from dtc.data.synth import SynthConfig

    return SynthConfig(height=args.size[0], width=args.size[1], frames=args.frames,
                       views=tuple(v.strip() for v in args.views.split(",") if v.strip()),
                       motion=args.motion, shadow_rate=args.shadow_rate, noise=args.noise)


def _run_synth(args) -> int:
    from dtc.data.write import write_synth_dataset

    summary = write_synth_dataset(args.out, args.videos, _config(args), seed=args.seed,
                                  split_fractions=args.split, write_flows=not args.no_flows)
    counts = {}
    for s in summary["split"].values():
        counts[s] = counts.get(s, 0) + 1
    print(f"wrote {summary['frames_written']} frames of {args.videos} videos to {args.out} "
          f"(patients per split: {counts})")
    return 0


def _run_synth3d(args) -> int:
    from dtc.data.synth3d import Synth3DConfig, write_synth3d_dataset

    cfg = Synth3DConfig(height=args.size[0], width=args.size[1], planes=args.planes, sweep=args.sweep,
                        plane_spacing_mm=args.plane_spacing, sweep_angle_deg=args.sweep_angle,
                        voxel_mm=args.voxel_mm, shadow_rate=args.shadow_rate, noise=args.noise)
    summary = write_synth3d_dataset(args.out, args.volumes, cfg, seed=args.seed)
    shapes = {tuple(v["shape"]) for v in summary["volumes"]}
    print(f"wrote {args.volumes} {args.sweep} volumes (shape {sorted(shapes)} slices x rows x columns) "
          f"as NIfTI image + label to {args.out}")
    return 0


def flow_to_rgb(flow: np.ndarray, max_mag: float | None = None) -> np.ndarray:
    """Colour-code a (2, H, W) flow: hue = direction, saturation = magnitude / max_mag (uint8 RGB)."""
    import cv2

    dx, dy = flow
    mag, ang = cv2.cartToPolar(dx.astype(np.float32), dy.astype(np.float32), angleInDegrees=True)
    scale = max_mag if max_mag else max(float(np.percentile(mag, 99)), 1e-6)
    hsv = np.zeros((*dx.shape, 3), np.uint8)
    hsv[..., 0] = (ang / 2).astype(np.uint8)
    hsv[..., 1] = np.clip(mag / scale * 255, 0, 255).astype(np.uint8)
    hsv[..., 2] = 255
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _overlay(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import cv2

    rgb = np.repeat((np.clip(frame, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, (255, 200, 0), 1)
    return rgb


def _run_preview(args) -> int:
    import cv2
    import imageio.v2 as imageio

    from dtc.data.synth import TRUSScene
    from dtc.io import atomic_write_bytes

    cfg = _config(args)
    views = cfg.views
    n_cols = args.columns
    step = max(1, (cfg.frames - 1) // max(n_cols - 1, 1)) if n_cols > 1 else 1
    rows_img = []
    gif_frames = []
    for view in views:
        scene = TRUSScene(cfg, args.seed, view)
        rendered = [scene.render(t) for t in range(cfg.frames)]
        flows = np.stack([r[2] for r in rendered])
        vmax = max(float(np.percentile(np.hypot(flows[1:, 0], flows[1:, 1]), 99)), 1e-3) if cfg.frames > 1 else 1.0
        picks = [min(cfg.frames - 1, 1 + k * step) if cfg.frames > 1 else 0 for k in range(n_cols)]
        top = np.concatenate([_overlay(rendered[t][0], rendered[t][1]) for t in picks], axis=1)
        mid = np.concatenate([np.repeat(rendered[t][1][..., None] * np.uint8(255), 3, 2) for t in picks], axis=1)
        bot = np.concatenate([flow_to_rgb(rendered[t][2], vmax) for t in picks], axis=1)
        rows_img += [top, mid, bot]
        for t in range(cfg.frames):
            pair = np.concatenate([_overlay(rendered[t][0], rendered[t][1]), flow_to_rgb(rendered[t][2], vmax)], axis=1)
            gif_frames.append((view, t, pair))
    strip = np.concatenate(rows_img, axis=0)
    if args.strip_width and strip.shape[1] > args.strip_width:
        s = args.strip_width / strip.shape[1]
        strip = cv2.resize(strip, (args.strip_width, int(round(strip.shape[0] * s))), interpolation=cv2.INTER_AREA)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError(f"could not encode {out}")
    atomic_write_bytes(out, buf.tobytes())
    print(f"wrote {out} ({strip.shape[1]}x{strip.shape[0]}; rows per view: frames with gland outline, masks, "
          "GT flow colour-coded)")
    if args.gif:
        import io

        scale = args.gif_scale
        frames = []
        for _, _, pair in gif_frames[: args.gif_frames * len(views)]:
            frames.append(cv2.resize(pair, (int(pair.shape[1] * scale), int(pair.shape[0] * scale)), interpolation=cv2.INTER_AREA))
        bio = io.BytesIO()
        imageio.mimsave(bio, frames, format="GIF", duration=0.08, loop=0)
        gif = Path(args.gif)
        gif.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(gif, bio.getvalue())
        print(f"wrote {gif} ({len(frames)} frames, {len(bio.getvalue()) / 1e6:.2f} MB)")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="simulated dataset and data previews")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    s = sub.add_parser("synth", help="write a simulated TRUS video dataset (TRUS-V layout, patient-level split)")
    s.add_argument("out", help="output folder")
    s.add_argument("--videos", type=int, default=20, help="number of videos (one patient x one view each)")
    _add_sim_options(s, frames=48)
    s.add_argument("--split", type=_fractions, default=(0.7, 0.15, 0.15), help="train,val,test patient fractions")
    s.add_argument("--no-flows", action="store_true", help="do not write the ground-truth flows")
    s.set_defaults(func=_run_synth)
    s3 = sub.add_parser("synth3d", help="write simulated 3-D TRUS volumes (NIfTI image + label, exact affine)")
    s3.add_argument("out", help="output folder (images/, labels/, meta.json)")
    s3.add_argument("--volumes", type=int, default=4, help="number of volumes")
    s3.add_argument("--planes", type=int, default=48, help="planes per sweep")
    s3.add_argument("--size", type=_size, default=(128, 128), help="plane HxW (default 128x128)")
    s3.add_argument("--sweep", choices=("linear", "rotational"), default="linear",
                    help="linear: axial planes stepped along the probe; rotational: sagittal planes rotated about it")
    s3.add_argument("--plane-spacing", type=float, default=1.0, help="mm between planes of a linear sweep")
    s3.add_argument("--sweep-angle", type=float, default=60.0, help="half-angle (degrees) of a rotational sweep")
    s3.add_argument("--voxel-mm", type=float, default=None, help="Cartesian voxel of a rotational sweep (default: pixel size)")
    s3.add_argument("--shadow-rate", type=float, default=2.0, help="mean calcifications per volume")
    s3.add_argument("--noise", type=float, default=1.0, help="electronic noise level (relative)")
    s3.add_argument("--seed", type=int, default=0)
    s3.set_defaults(func=_run_synth3d)
    v = sub.add_parser("preview", help="PNG strip (frames + gland outline, masks, GT flow) and an optional GIF")
    v.add_argument("out", help="PNG file to write")
    v.add_argument("--gif", default=None, help="also write a GIF (frame | flow) here")
    v.add_argument("--columns", type=int, default=5, help="frames shown per view in the strip")
    v.add_argument("--gif-frames", type=int, default=16, help="GIF frames per view")
    v.add_argument("--gif-scale", type=float, default=0.35, help="GIF scale factor")
    v.add_argument("--strip-width", type=int, default=1600, help="downscale the strip to at most this width")
    _add_sim_options(v, frames=24)
    v.set_defaults(func=_run_preview)

    def _no_action(args):
        p.print_help()
        return 2

    p.set_defaults(func=_no_action)
