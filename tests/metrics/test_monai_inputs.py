"""The metric objects accept MONAI's conventions: (B, 1, H, W) tensors and y_pred= / y= keywords, and
TemporalMetric takes batches of consecutive frames; results equal the per-frame (H, W) calls."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dtc.metrics import BinaryMetric, SUNSegMetric, TemporalMetric


def _video(n=5, h=24, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.zeros(n, 1, h, w)
    for i in range(n):
        gt[i, 0, 6 + i: 16 + i, 8: 20 + i] = 1
    pred = (0.7 * gt + 0.3 * torch.rand(n, 1, h, w, generator=g)).clamp(0, 1)
    return pred, gt


@pytest.mark.parametrize("cls", [BinaryMetric, SUNSegMetric])
def test_batch_channel_tensors_and_keywords_equal_per_frame_calls(cls):
    pred, gt = _video()
    monai, plain = cls(), cls()
    monai(y_pred=pred, y=gt, video_id="v")
    for i in range(pred.shape[0]):
        plain(pred[i, 0].numpy(), gt[i, 0].numpy(), video_id="v", frame_index=i)
    assert monai.aggregate()["overall"] == pytest.approx(plain.aggregate()["overall"], nan_ok=True)


def test_monai_input_errors_name_the_argument():
    pred, gt = _video()
    metric = BinaryMetric()
    with pytest.raises(TypeError, match="pass pred or y_pred, not both"):
        metric(pred, gt, y_pred=pred)
    with pytest.raises(TypeError, match=r"gt \(or y\) is required"):
        metric(y_pred=pred)
    with pytest.raises(ValueError, match=r"pred: a 4-D input must be \(B, 1, H, W\)"):
        metric(torch.cat([pred, pred], 1), gt)


def test_temporal_metric_takes_batches_of_consecutive_frames():
    pred, gt = _video(n=6)
    flow = torch.zeros(6, 2, 24, 32)
    flow[:, 0] = 0.5
    batched, single = TemporalMetric(), TemporalMetric()
    # Two batches of three frames: the second batch's first frame pairs with the first batch's last.
    batched(y_pred=pred[:3], y=gt[:3], video_id="v", frame_index=[0, 1, 2], flow=flow[:3])
    batched(y_pred=pred[3:], y=gt[3:], video_id="v", frame_index=[3, 4, 5], flow=flow[3:])
    for i in range(6):
        single(pred[i, 0].numpy(), gt[i, 0].numpy(), video_id="v", frame_index=i, flow=flow[i].numpy())
    a, b = batched.aggregate()["per_video"]["v"], single.aggregate()["per_video"]["v"]
    assert a == pytest.approx(b, nan_ok=True) and np.isfinite(a["TC_flow"])
    with pytest.raises(ValueError, match=r"flow must carry one entry per frame \(N = 2"):
        TemporalMetric()(pred[:2], flow=flow[:3])
    with pytest.raises(ValueError, match="frame_index must increase"):
        TemporalMetric()(pred[:3], video_id="v", frame_index=[0, 2, 1])
