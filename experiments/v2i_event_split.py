"""Where the clip teacher differs from the image model: validation key-frame Dice on the frames a transient
event of the simulator touched and on calm ones, for the image model, the clip teacher, the control
(`a2-tfd-off`) and the V2I student (`full`) of every seed of a finished `dtc v2i ablation` folder.

    python experiments/v2i_event_split.py runs/ablation-v2i/cpu      (docs/v2i.md, "The ablation on the CPU")
"""
import json, sys, statistics
from pathlib import Path
import torch
from dtc import models
from dtc.distill import v2i
from dtc.distill.msi import key_index

root = Path(sys.argv[1]); rows = []
for seed_dir in sorted(root.glob("seed*")):
    cfg = v2i.V2IConfig(**{k: v for k, v in json.loads((seed_dir / "s0" / "s0.json").read_text())["config"].items()})
    key = key_index(cfg.T, cfg.causal)
    image, _ = models.load_checkpoint(seed_dir / "s0" / "image_model.pt"); image.eval()
    _, teacher = v2i.load_teacher(cfg, seed_dir / "s0" / "image_model.pt", seed_dir / "s1-msi" / "teacher.pt"); teacher.eval()
    control, _ = models.load_checkpoint(seed_dir / "a2-tfd-off" / "student.pt"); control.eval()
    full, _ = models.load_checkpoint(seed_dir / "full" / "student.pt"); full.eval()
    fns = {"image": lambda c: image(c[:, key])[0], "teacher": lambda c: teacher(c)[0],
           "control": lambda c: control(c[:, key])[0], "v2i": lambda c: full(c[:, key])[0]}
    data = v2i.ClipSampler(cfg, "val", cfg.eval_delta)
    res = {k: {"event": [], "calm": []} for k in fns}
    with torch.no_grad():
        for i in range(len(data)):
            vi, t = data.keys[i]
            ev = bool(data.frames.scene(vi).active_events(t))
            item = data[i]
            clip = v2i._normalise(item["image"])[None]
            target = item["mask"][key]
            for name, fn in fns.items():
                pred = (torch.sigmoid(fn(clip))[0] > 0.5).float()
                inter, total = (pred * target).sum(), pred.sum() + target.sum()
                res[name]["event" if ev else "calm"].append(1.0 if total == 0 else float(2 * inter / total))
    row = {"seed": seed_dir.name, "n_event": len(res["image"]["event"]), "n_calm": len(res["image"]["calm"])}
    for name in fns:
        for kind in ("event", "calm"):
            v = res[name][kind]; row[f"{name}_{kind}"] = sum(v) / len(v) if v else float("nan")
    rows.append(row); print(json.dumps(row), flush=True)
for name in ("image", "teacher", "control", "v2i"):
    for kind in ("event", "calm"):
        v = [r[f"{name}_{kind}"] for r in rows]
        print(f"{name:8s} {kind:5s} {statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}")
