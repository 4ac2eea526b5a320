"""`dtc bench flow` at a tiny size: one interleaved row with the end-point errors of dtc and OpenCV
against the simulator's exact flow (timings untested)."""
from __future__ import annotations

import numpy as np

from dtc.bench import main
from dtc.bench.flow import _video, ground_truth_epe
from dtc.flow import FARNEBACK_DEFAULTS


def test_bench_flow_prints_a_row_with_both_ground_truth_errors(capsys):
    assert main(["flow", "--device", "cpu", "--size", "64,96", "--batch", "1", "--repeat", "1",
                 "--threads", "1", "--opencv-batch", "0"]) == 0
    out = capsys.readouterr().out
    assert "EPE dtc px | EPE OpenCV px" in out and "host load" in out
    row = next(line for line in out.splitlines() if line.startswith("| 64×96 | 1 |"))
    epe_ours, epe_opencv = (float(v) for v in row.strip(" |").split("|")[-2:])
    assert 0 < epe_ours < 5 and 0 < epe_opencv < 5


def test_ground_truth_epe_is_the_error_of_the_estimate_against_the_exact_flow():
    """A sign or direction slip would score worse than predicting no motion at all."""
    video = _video(128, 224, 4)
    epe_ours, epe_opencv = ground_truth_epe(video, "cpu", dict(FARNEBACK_DEFAULTS))
    gt = -video.flows[1:]
    zero_motion = float(np.linalg.norm(gt, axis=1)[np.broadcast_to(video.fov, gt[:, 0].shape)].mean())
    assert epe_ours <= 1.05 * epe_opencv
    assert epe_ours < 0.75 * zero_motion
