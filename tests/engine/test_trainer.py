"""The two-stage trainer on the embedded simulator: it learns, resumes exactly, never overwrites a
run, runs stage 2 with every term, and refuses bad settings before training."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch

from dtc.engine import ConfigError, Trainer, load_config, load_run_checkpoint, model_from_checkpoint, train


def test_teacher_training_lowers_the_loss_and_reaches_a_dice_bar(tmp_path):
    torch.manual_seed(0)
    cfg = load_config(None, [
        "stage=teacher", "data.height=64", "data.width=96", "data.num_videos=6", "data.frames=16",
        "data.batch_size=8", "model.kwargs={base: 8}", "optim.lr=1e-2", "optim.epochs=8", "optim.scheduler=poly",
        f"run.out_dir={tmp_path / 'teacher'}", "run.progress=false"])
    summary = train(cfg)
    history = summary["history"]
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    # Stated bar: after 32 steps the 8-channel student segments held-out synthetic patients with Dice > 0.6.
    assert summary["best_val_dice"] > 0.6
    ckpt = load_run_checkpoint(tmp_path / "teacher" / "best.pt")
    assert ckpt["stage"] == "teacher" and ckpt["epoch"] >= 1
    assert (tmp_path / "teacher" / "metrics.csv").read_text().count("\n") == 9  # header + 8 epochs
    assert (tmp_path / "teacher" / "config.yaml").is_file()


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_reproduces_the_uninterrupted_run(tiny_config):
    common = ["stage=teacher", "optim.epochs=3", "run.deterministic=true", "optim.scheduler=poly"]
    straight = Trainer(tiny_config(*common, out="straight"))
    straight.fit()

    def interrupt(trainer, epoch, step):
        if epoch == 2 and step == 1:
            raise _Interrupt

    cfg = tiny_config(*common, out="interrupted")
    with pytest.raises(_Interrupt):
        Trainer(cfg, on_step=interrupt).fit()
    assert load_run_checkpoint(cfg.run.out_dir + "/last.pt")["epoch"] == 1
    resumed = Trainer(cfg, resume=True)
    assert resumed.epoch == 1
    resumed.fit()
    a, b = _params(straight.model), _params(resumed.model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.step == straight.step
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]


def test_a_run_folder_is_never_overwritten(tiny_config):
    cfg = tiny_config("stage=teacher", "optim.epochs=1")
    train(cfg)
    with pytest.raises(ConfigError, match="already holds a run"):
        Trainer(cfg)
    with pytest.raises(ConfigError, match="cannot resume: no checkpoint"):
        Trainer(tiny_config("stage=teacher", out="fresh"), resume=True)
    other = tiny_config("stage=teacher", "model.kwargs={base: 8}")
    with pytest.raises(ConfigError, match=r"cannot resume: this checkpoint \(.*\) holds a student \(base 4\); the config asks for"):
        Trainer(other, resume=True)


def test_student_stage_computes_every_term_and_saves_a_loadable_student(tiny_config, tiny_teacher):
    cfg = tiny_config("stage=student", f"teacher_checkpoint={tiny_teacher}", "optim.epochs=1", "flow.provider=gt",
                      out="student")
    trainer = Trainer(cfg)
    assert trainer.student_init == "teacher copy"
    # The student starts as the teacher's copy, and the teacher is frozen.
    for (k, a), b in zip(trainer.model.state_dict().items(), trainer.teacher.state_dict().values()):
        assert torch.equal(a, b), k
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    summary = trainer.fit()
    row = summary["history"][0]
    for term in ("seg", "kd", "con", "proto"):
        assert math.isfinite(row[f"train_{term}"]) and row[f"train_{term}"] > 0, term
    model, ckpt = model_from_checkpoint(cfg.run.out_dir + "/last.pt")
    assert ckpt["stage"] == "student" and not model.training
    x = torch.rand(2, 3, 48, 64)
    assert model(x)[0].shape == (2, 1, 48, 64)


def test_channels_last_bf16_student_step_matches_the_loss_terms(tiny_config, tiny_teacher):
    # The fast CPU configuration of the demo: NHWC activations and bf16 autocast.
    cfg = tiny_config("stage=student", f"teacher_checkpoint={tiny_teacher}", "optim.epochs=1", "run.channels_last=true",
                      "optim.amp=bf16", out="cl")
    trainer = Trainer(cfg)
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in trainer.model.parameters())
    row = trainer.fit()["history"][0]
    for term in ("seg", "kd", "con", "proto"):
        assert math.isfinite(row[f"train_{term}"]) and row[f"train_{term}"] > 0, term


def test_ablation_switches_terms_off(tiny_config, tiny_teacher):
    cfg = tiny_config("stage=student", f"teacher_checkpoint={tiny_teacher}", "optim.epochs=1", "loss.ablation=seg+kd",
                      out="baseline")
    row = train(cfg)["history"][0]
    assert row["train_con"] == 0 and row["train_proto"] == 0 and row["train_kd"] > 0


def test_occlusion_check_with_estimated_flow(tiny_config, tiny_teacher):
    cfg = tiny_config("stage=student", f"teacher_checkpoint={tiny_teacher}", "optim.epochs=1",
                      "flow.provider=farneback", "loss.occlusion_check=true", "data.max_windows=4", out="occ")
    trainer = Trainer(cfg)
    batch = next(iter(trainer.loader))
    images = batch["image"]
    backward = trainer.flow_provider.backward_flows(images, batch)
    for t in range(1, images.shape[1]):
        pair = torch.stack([images[:, t], images[:, t - 1]], dim=1)
        expected = trainer.flow_provider(pair, {**batch, "frame_index": batch["frame_index"][:, [t, t - 1]]})[:, 1]
        torch.testing.assert_close(backward[:, t], expected)
    loss, terms = trainer._student_loss(batch)
    assert torch.isfinite(loss) and terms["con"] > 0
    loss.backward()


def test_occlusion_check_with_ground_truth_flow(tiny_config, tiny_teacher):
    cfg = tiny_config("stage=student", f"teacher_checkpoint={tiny_teacher}", "optim.epochs=1",
                      "flow.provider=gt", "loss.occlusion_check=true", "data.max_windows=4", out="occ_gt")
    trainer = Trainer(cfg)
    batch = next(iter(trainer.loader))
    loss, terms = trainer._student_loss(batch)
    assert torch.isfinite(loss) and terms["con"] > 0
    loss.backward()


def test_corrupt_teacher_checkpoint_is_reported(tiny_config, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"bad.pt could not be read"):
        Trainer(tiny_config("stage=student", f"teacher_checkpoint={bad}", out="s"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_non_finite_loss_stops_training_with_a_clear_error(tiny_config):
    trainer = Trainer(tiny_config("stage=teacher", "optim.epochs=2", "run.log_every=2", out="nan"))
    real_loss = trainer._teacher_loss
    calls = []

    def poisoned(batch):
        loss, terms = real_loss(batch)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 2 else loss), terms

    trainer._teacher_loss = poisoned
    with pytest.raises(FloatingPointError, match=r"teacher epoch 1: a loss in batches 0..1 is not finite"):
        trainer.fit()


def test_cuda_device_with_a_cpu_only_core_is_refused_before_training(tiny_config, monkeypatch):
    import dtc

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dtc, "build_info", lambda: {"cuda": False})
    with pytest.raises(ConfigError, match=r"run.device is cuda.*no CUDA kernels.*DTC_CUDA=ON"):
        Trainer(tiny_config("stage=teacher", "run.device=cuda", out="nocuda"))


def test_gpu_older_than_the_built_cuda_archs_is_refused_before_training(tiny_config, monkeypatch):
    import dtc

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(dtc, "build_info", lambda: {"cuda": True, "cuda_archs": "90"})
    with pytest.raises(ConfigError, match=r"compute capability 8.0.*built for 90.*DTC_CUDA_ARCHS"):
        Trainer(tiny_config("stage=teacher", "run.device=cuda", out="oldgpu"))


@pytest.mark.slow
def test_two_process_gloo_ddp_through_torchrun_with_collective_early_stop(tmp_path):
    # lr so small that validation Dice cannot improve after the first epoch: patience 1 stops both
    # ranks at epoch 2 of 5, and neither waits for the other in a collective.
    overrides = ["data.height=48", "data.width=64", "data.num_videos=6", "data.frames=8", "data.batch_size=2",
                 "data.max_windows=8", "model.kwargs={base: 4}", "run.progress=false", "run.threads=1",
                 "optim.lr=1e-9", "optim.epochs=5", "optim.early_stop_patience=1", "optim.scheduler=none"]
    # Each rank's stdout goes to its own file (--redirects), so the two summaries cannot interleave.
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           f"--log-dir={logs}", "--redirects=3", "-m", "dtc", "train-teacher", "--out", str(tmp_path / "ddp"), *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    rank_logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted(logs.rglob("*.log")))
    assert proc.returncode == 0, proc.stderr[-2000:] + rank_logs
    outputs = sorted(logs.rglob("stdout.log"))
    assert len(outputs) == 2, outputs
    summaries = [json.loads(line) for path in outputs for line in path.read_text().splitlines() if line.startswith("{")]
    assert len(summaries) == 2
    assert summaries[0] == summaries[1]  # metrics are gathered across ranks: both see the same values
    assert summaries[0]["epochs"] == 2 and summaries[0]["early_stopped"]
    ckpt = load_run_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2


@pytest.mark.parametrize("inner", ["gt", "farneback"])
def test_student_trains_through_a_cached_flow_provider(tiny_config, tiny_teacher, tmp_path, inner):
    # The trainer used to hand the cache folder as cache_dir= (the factory wants root=) and to pass a
    # preset to the ground-truth provider, which takes no options: neither cached provider could start.
    cache = tmp_path / "flow-cache"
    cfg = tiny_config("stage=student", f"teacher_checkpoint={tiny_teacher}", "optim.epochs=2",
                      f"flow.provider=cached:{inner}", f"flow.cache_dir={cache}", "data.max_windows=null",
                      out=f"cached-{inner}")
    trainer = Trainer(cfg)
    history = trainer.fit()["history"]
    assert len(history) == 2 and all(math.isfinite(row["train_loss"]) for row in history)
    provider = trainer.flow_provider
    assert provider.misses > 0 and provider.hits > 0, "the second epoch must reuse the first epoch's flows"
    assert any(cache.rglob("*.npy"))


def test_a_cached_flow_provider_with_augmented_frames_is_refused(tiny_config, tiny_teacher, tmp_path):
    cfg = tiny_config("stage=student", f"teacher_checkpoint={tiny_teacher}", "flow.provider=cached:farneback",
                      f"flow.cache_dir={tmp_path}", "data.augment=true")
    with pytest.raises(ConfigError, match="data.augment"):
        cfg.validate()


def test_checkpoints_record_the_preprocessing_deployment_needs(tiny_teacher):
    # dtc.Segmenter and dtc export read it; before, the normalisation lived only in the training code.
    from dtc.deploy import Preprocessing, Segmenter
    from dtc.engine.data import IMAGE_MEAN, IMAGE_STD

    ckpt = load_run_checkpoint(tiny_teacher)
    pre = Preprocessing.from_dict(ckpt["preprocess"])
    assert pre == Preprocessing(in_channels=3, mean=tuple(IMAGE_MEAN), std=tuple(IMAGE_STD), multiple=16,
                                train_size=(48, 64), threshold=0.5)
    assert Segmenter.from_checkpoint(tiny_teacher, device="cpu").preprocess == pre


def test_resume_with_a_changed_config_is_refused_unless_the_change_is_allowed_and_recorded(tiny_config):
    # It used to take another data seed, ablation or learning rate silently and rewrite config.yaml to
    # claim values the finished epochs were not trained with.
    common = ["stage=teacher", "optim.epochs=1", "optim.scheduler=poly"]
    cfg = tiny_config(*common, out="run")
    Trainer(cfg).fit()
    changed = tiny_config("stage=teacher", "optim.epochs=2", "optim.scheduler=poly", "optim.lr=0.5", "data.seed=3",
                          "run.progress=false", out="run")
    with pytest.raises(ConfigError, match=r"cannot resume.*data\.seed: 0 -> 3.*optim\.epochs: 1 -> 2.*optim\.lr"):
        Trainer(changed, resume=True)
    with pytest.raises(ConfigError, match=r"data\.seed: 0 -> 3") as info:
        Trainer(changed, resume=True, allow_changes=["optim"])
    assert "optim.lr" not in str(info.value), "an allowed section is not listed as refused"
    assert not os.path.exists(os.path.join(cfg.run.out_dir, "config_changes.json"))
    # Settings that only say how the run executes may differ; allowed changes are recorded.
    extended = tiny_config("stage=teacher", "optim.epochs=2", "optim.scheduler=poly", "data.num_workers=0", out="run")
    trainer = Trainer(extended, resume=True, allow_changes=["optim.epochs"])
    trainer.fit()
    log = json.load(open(os.path.join(cfg.run.out_dir, "config_changes.json")))
    assert log == [{"resumed_after_epoch": 1, "changes": {"optim.epochs": {"was": 1, "now": 2}}}]


def test_cli_allow_change_needs_resume(tmp_path, capsys):
    from dtc.cli.main import main

    code = main(["train-teacher", "--out", str(tmp_path / "r"), "--allow-change", "optim.epochs", "optim.epochs=1"])
    assert code != 0 and "--allow-change only applies with --resume" in capsys.readouterr().err
