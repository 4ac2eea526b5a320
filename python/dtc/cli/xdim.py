"""`dtc xdim train-teacher | pseudo | train-student | infer | experiment`: the XDim-KD pipeline (docs/xdim.md)."""
from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("xdim", help="XDim-KD: 2-D teacher -> 3-D student for sparsely labelled volumes",
                              description="Cross-dimensional distillation for 3-D ultrasound volumes (docs/xdim.md).")
    sub = p.add_subparsers(dest="xdim_command", metavar="STEP", required=True)

    t = sub.add_parser("train-teacher", help="select the labelled slices, train the 2-D teacher")
    t.add_argument("--data", required=True, help="training volumes: a folder with images/ and labels/ (NIfTI)")
    t.add_argument("--run", required=True, help="run folder to create")
    t.add_argument("--ratio", type=float, default=0.005, help="fraction of labelled slices (default 0.005)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--size", type=int, default=256, help="network input size (multiple of 32; default 256)")
    t.add_argument("--chunk", type=int, default=16, help="slices per student chunk (default 16)")
    t.add_argument("--preset", choices=("dtc", "cdkd"), default="dtc", help="label selection (docs/xdim.md)")
    t.add_argument("--encoder", help="a dtc 2-D checkpoint to freeze as the encoder (default: train one)")
    t.add_argument("--encoder-model", default="student", help="dtc model the encoder is trained as (default student)")
    t.add_argument("--encoder-epochs", type=int, default=100)
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-4)
    t.set_defaults(func=_train_teacher)

    s = sub.add_parser("pseudo", help="write pseudo-labels of the training volumes")
    s.add_argument("--run", required=True)
    s.add_argument("--draws", type=int, default=20, help="TTA draws per slice (default 20)")
    s.add_argument("--solver", choices=("pcg", "adam"), default="pcg")
    s.add_argument("--smooth-chunk", type=int, default=None, help="smooth in blocks of this many slices (cdkd: 64)")
    s.set_defaults(func=_pseudo)

    c = sub.add_parser("train-student", help="train the 3-D student")
    c.add_argument("--run", required=True)
    c.add_argument("--mode", choices=("sparse", "pseudo", "full"), default="full")
    c.add_argument("--epochs", type=int, default=100)
    c.add_argument("--batch", type=int, default=16)
    c.add_argument("--lr", type=float, default=1e-4)
    c.add_argument("--base", type=int, default=32, help="StudentKD width (default 32)")
    c.add_argument("--chunks-per-epoch", type=int, default=None)
    c.set_defaults(func=_train_student)

    i = sub.add_parser("infer", help="segment volumes; NIfTI masks with the input's affine, meshes, metrics")
    i.add_argument("--run", required=True)
    i.add_argument("--input", required=True, help="a folder with images/ (labels/ optional) or one NIfTI file")
    i.add_argument("--out", required=True)
    i.add_argument("--model", default="student-full", help="student-full, student-pseudo, student-sparse or teacher")
    i.add_argument("--overlap", type=int, default=None, help="slices shared by neighbouring chunks (default Z/2; 0: cdkd)")
    i.add_argument("--threshold", type=float, default=0.5)
    i.add_argument("--mesh", action="store_true", help="also write STL, PLY and a PNG of each surface")
    i.set_defaults(func=_infer)

    e = sub.add_parser("experiment", help="run an XDim-KD experiment file (experiments/xdim.yaml)")
    e.add_argument("file")
    e.add_argument("--preset", required=True)
    e.add_argument("--out", default=None, help="default runs/<name>/<preset>")
    e.add_argument("--ratios", type=lambda t: [float(v) for v in t.split(",")], default=None,
                   help="only these of the preset's label ratios (comma-separated)")
    e.add_argument("--seeds", type=lambda t: [int(v) for v in t.split(",")], default=None,
                   help="only these of the preset's seeds (comma-separated)")
    e.set_defaults(func=_experiment)


def _train_teacher(args) -> int:
    from dtc.volume.pipeline import train_teacher

    settings = train_teacher(args.data, args.run, ratio=args.ratio, seed=args.seed, size=args.size, chunk=args.chunk,
                             preset=args.preset, encoder=args.encoder, encoder_model=args.encoder_model,
                             encoder_epochs=args.encoder_epochs, epochs=args.epochs, batch=args.batch, lr=args.lr)
    print(f"teacher written to {args.run}/teacher.pt (final BCE {settings['teacher_loss']:.4f})")
    return 0


def _pseudo(args) -> int:
    from dtc.volume.pipeline import write_pseudo_labels

    names = write_pseudo_labels(args.run, draws=args.draws, solver=args.solver, smooth_chunk=args.smooth_chunk)
    print(f"pseudo-labels of {len(names)} volumes written to {args.run}/pseudo/")
    return 0


def _train_student(args) -> int:
    from dtc.volume.pipeline import train_student

    train_student(args.run, args.mode, epochs=args.epochs, batch=args.batch, lr=args.lr, base=args.base,
                  chunks_per_epoch=args.chunks_per_epoch)
    print(f"student written to {args.run}/student-{args.mode}.pt")
    return 0


def _infer(args) -> int:
    from dtc.volume.pipeline import infer

    summary = infer(args.run, args.input, args.out, model=args.model, overlap=args.overlap, threshold=args.threshold,
                    mesh=args.mesh)
    if "mean" in summary:
        print("mean: " + json.dumps({k: round(v, 4) for k, v in summary["mean"].items()}))
    print(f"masks written to {args.out}")
    return 0


def _experiment(args) -> int:
    from dtc.volume.experiment import run_experiment

    result = run_experiment(args.file, args.preset, args.out, ratios=args.ratios, seeds=args.seeds)
    print(result["table"])
    return 0
