"""`dtc train-teacher` (stage 1) and `dtc train-student` (stage 2)."""
from __future__ import annotations

import json


def register(subparsers) -> None:
    for stage, command, help_text in (("teacher", "train-teacher", "stage 1: train the still-image teacher"),
                                      ("student", "train-student", "stage 2: distil a temporally coherent student")):
        p = subparsers.add_parser(command, help=help_text, description=help_text + ". Settings come from --config "
                                  "(YAML) and KEY=VALUE overrides, e.g. optim.lr=1e-3 data.batch_size=4.")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (dotted keys)")
        p.add_argument("--config", help="YAML config file (sections data, model, optim, loss, flow, run)")
        p.add_argument("--out", help="run folder (same as run.out_dir=...)")
        p.add_argument("--resume", action="store_true", help="continue the run in the run folder from last.pt "
                       "(under the settings it was trained with)")
        p.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                       help="with --resume: let KEY (e.g. optim.epochs, or a section such as optim) differ from the "
                       "run's settings; repeatable; each change is recorded in config_changes.json")
        p.add_argument("--dry-run", action="store_true", help="validate and print the resolved config, train nothing")
        if stage == "student":
            p.add_argument("--teacher", help="stage-1 checkpoint (same as teacher_checkpoint=...)")
        p.set_defaults(func=run, stage=stage)


def run(args) -> int:
    import yaml

    from dtc.engine import load_config, train

    overrides = [f"stage={args.stage}", *args.overrides]
    if args.out:
        overrides.append(f"run.out_dir={args.out}")
    if getattr(args, "teacher", None):
        overrides.append(f"teacher_checkpoint={args.teacher}")
    cfg = load_config(args.config, overrides).validate()
    if args.dry_run:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    if args.allow_change and not args.resume:
        raise ValueError("--allow-change only applies with --resume")
    summary = train(cfg, resume=args.resume, allow_changes=args.allow_change)
    summary.pop("history")
    print(json.dumps(summary))
    return 0
