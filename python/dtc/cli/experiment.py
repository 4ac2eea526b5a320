"""`dtc experiment`: run a declarative experiment (grid x seeds), show its state, rebuild its table."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("experiment", help="run experiment files (ablation grids over seeds)",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="experiment_command", metavar="ACTION")

    def common(p):
        p.add_argument("file", type=Path, help="experiment YAML (e.g. experiments/ablation-paper.yaml)")
        p.add_argument("--preset", default=None, help="a preset of the file (e.g. cpu-small, gpu)")
        p.add_argument("--out", type=Path, default=Path("runs"),
                       help="root folder; runs go to OUT/<name>/<preset>/seed<k>/<arm>/")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="config override applied to every run (repeatable), e.g. run.device=cpu")

    run = sub.add_parser("run", help="train and evaluate every unfinished run, then write the results table",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common(run)
    run.add_argument("--jobs", type=int, default=1,
                     help="runs at a time; > 1 runs each in its own process (one GPU per worker with CUDA)")
    run.add_argument("--only", action="append", default=None, metavar="PATTERN",
                     help="run ids to run (glob, repeatable), e.g. 'seed0/*' or '*/full'; their teachers come along")
    run.add_argument("--dry-run", action="store_true", help="show what would be done and stop")
    run.add_argument("--no-table", action="store_true", help="do not (re)write the results table")
    run.set_defaults(func=_run)

    status = sub.add_parser("status", help="state of every run (finished / trained / partial / new)")
    common(status)
    status.set_defaults(func=_status)

    table = sub.add_parser("table", help="(re)write results.csv/.md from the evaluated runs")
    common(table)
    table.set_defaults(func=_table)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _load(args):
    from dtc.experiments import load_experiment

    return load_experiment(args.file, args.preset, args.overrides)


def _run(args) -> int:
    from dtc.experiments import run_experiment

    exp = _load(args)
    summary = run_experiment(exp, args.out, jobs=args.jobs, only=args.only, dry_run=args.dry_run,
                             write_table=not args.no_table)
    width = max(len(r) for r in summary["runs"]) if summary["runs"] else 0
    for run_id, action in summary["runs"].items():
        print(f"  {run_id:<{width}}  {action}")
    if summary["table"]:
        print(f"table: {summary['table']['markdown']} (CSV: {summary['table']['csv']})")
        print(Path(summary["table"]["markdown"]).read_text())
    if not args.dry_run:
        print(f"done in {summary['minutes']:.1f} min")
    return 0


def _status(args) -> int:
    from dtc.experiments import run_state

    exp = _load(args)
    plan = exp.plan(args.out)
    width = max(len(r.run_id) for r in plan)
    for run in plan:
        print(f"  {run.run_id:<{width}}  {run_state(run)}  {run.out_dir}")
    return 0


def _table(args) -> int:
    from dtc.experiments import write_results

    paths = write_results(_load(args), args.out)
    if paths is None:
        print("no run is evaluated yet; nothing to tabulate", file=sys.stderr)
        return 1
    print(Path(paths["markdown"]).read_text())
    return 0
