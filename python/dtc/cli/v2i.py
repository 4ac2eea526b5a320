"""`dtc v2i s0 | s1 | s2 | run | ablation`: the V2I-Seg stages and their ablation (docs/v2i.md)."""
from __future__ import annotations

import json


def _setting(text: str):
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"settings are KEY=VALUE (e.g. epochs_s1=2), got {text!r}")
    return key, yaml.safe_load(value)


def register(subparsers) -> None:
    p = subparsers.add_parser("v2i", help="V2I-Seg: a clip teacher distilled into a single-frame student",
                              description="Video-to-image distillation: S0 image model, S1 clip teacher, S2 student "
                                          "(docs/v2i.md).")
    sub = p.add_subparsers(dest="v2i_command", metavar="STEP", required=True)
    for name, help_text in (("s0", "train the image model"), ("s1", "train the clip teacher (needs s0)"),
                            ("s2", "train the student against the frozen teacher (needs s0, s1)"),
                            ("run", "s0 then s1 then s2")):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("--out", required=True, help="run folder (finished stages there are skipped)")
        s.add_argument("--preset", choices=("cpu", "gpu"), default="cpu", help="starting settings (default cpu)")
        s.add_argument("settings", nargs="*", metavar="KEY=VALUE", help="V2IConfig settings, e.g. tfd=box msi=false")
        s.set_defaults(func=_stage, stage=name)
    a = sub.add_parser("ablation", help="run an ablation file (experiments/ablation-v2i.yaml)")
    a.add_argument("file")
    a.add_argument("--preset", required=True)
    a.add_argument("--out", default=None, help="default runs/<name>/<preset>")
    a.add_argument("--seeds", type=lambda t: [int(v) for v in t.split(",")], default=None)
    a.add_argument("--arms", type=lambda t: t.split(","), default=None)
    a.set_defaults(func=_ablation)


def _config(args):
    from dtc.distill.v2i import PRESETS, V2IConfig

    changes = dict(PRESETS[args.preset])
    changes.update(dict(_setting(s) for s in args.settings))
    return V2IConfig().replace(**changes)


def _stage(args) -> int:
    from dtc.distill.v2i import STAGES, run_stage

    cfg = _config(args)
    for stage in (STAGES if args.stage == "run" else (args.stage,)):
        metrics = run_stage(cfg, stage, args.out)
        print(f"{stage}: validation key-frame Dice {metrics['dice']:.4f}, flicker {metrics['flicker']:.4f}")
    return 0


def _ablation(args) -> int:
    from pathlib import Path

    from dtc.distill.v2i import load_ablation, run_ablation

    spec = load_ablation(args.file)
    out = args.out or str(Path("runs") / spec.get("name", "ablation-v2i") / args.preset)
    run_ablation(args.file, args.preset, out, seeds=args.seeds, arms=args.arms)
    print((Path(out) / "results.md").read_text(), end="")
    return 0
