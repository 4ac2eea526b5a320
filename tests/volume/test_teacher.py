"""The XDim-KD 2-D teacher: frozen encoders (dtc's own segmenter or a user's module), the head, stage A
training, and stage B pseudo-labels (TTA, cleaning, smoothing) of a volume."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dtc.models import create, save_checkpoint
from dtc.volume.teacher import (FrozenEncoder, SegmenterEncoder, SliceTeacher, encoder_from_spec, load_teacher,
                                pseudo_label_volume, save_teacher, train_teacher_head)


def _user_encoder(channels=5):
    torch.manual_seed(0)
    return FrozenEncoder(nn.Conv2d(3, channels, 8, stride=8), channels)


def test_user_encoder_is_frozen_and_checked():
    enc = _user_encoder()
    assert all(not p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.module.training  # frozen: train() does not switch it
    f = enc(torch.rand(2, 1, 32, 40))
    assert f.shape == (2, 5, 4, 5) and not f.requires_grad
    with pytest.raises(ValueError, match="grey"):
        enc(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="multiples of 8"):
        enc(torch.rand(2, 1, 30, 32))
    with pytest.raises(ValueError, match="expected"):
        FrozenEncoder(nn.Conv2d(3, 4, 8, stride=8), 5)(torch.rand(1, 1, 16, 16))


def test_segmenter_encoder_gives_the_stride8_encoder_level():
    net = create("student", base=8)
    enc = SegmenterEncoder(net)
    level = net.feature_strides.index(8)
    assert enc.channels == net.feature_channels[level] and enc.multiple == 16
    x = torch.rand(2, 1, 64, 48)
    f = enc(x)
    assert f.shape == (2, enc.channels, 8, 6)
    norm = (x.expand(-1, 3, -1, -1) - enc.mean) / enc.std
    assert torch.allclose(f, net.eval().features(norm)[level].detach())


def test_segmenter_without_pyramid_uses_pooled_taps():
    class Plain(torch.nn.Module):
        tap_channels = {"local": 2, "global": 3}
        multiple = 16

        def forward(self, x):
            n, _, h, w = x.shape
            return x[:, :1], x[:, :2], torch.nn.functional.avg_pool2d(x, 16)

    enc = SegmenterEncoder(Plain())
    f = enc(torch.rand(1, 1, 32, 32))
    assert enc.channels == 5 and f.shape == (1, 5, 4, 4)


def test_only_the_head_trains():
    torch.manual_seed(1)
    teacher = SliceTeacher(SegmenterEncoder(create("student", base=8)), hidden=16)
    before = {k: v.clone() for k, v in teacher.encoder.state_dict().items()}
    x = torch.rand(4, 32, 32)
    y = (x > 0.5).float()
    hist = train_teacher_head(teacher, x, y, epochs=2, batch=2, size=(32, 32), lr=1e-2,
                              generator=torch.Generator().manual_seed(0))
    assert len(hist) == 2
    after = teacher.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert teacher(torch.rand(3, 1, 32, 32)).shape == (3, 1, 32, 32)


def _threshold_teacher():
    """A teacher whose logits are 20 (mean_8x8(x) - 0.5): the head built by hand on an average-pool encoder."""
    enc = FrozenEncoder(nn.AvgPool2d(8), 3)
    teacher = SliceTeacher(enc, hidden=1)
    with torch.no_grad():
        conv1, conv2 = teacher.head[0], teacher.head[2]
        conv1.weight.zero_()
        conv1.weight[0, 0] = 10 * 0.229  # undo the ImageNet normalisation of channel 0: 10 x
        conv1.bias.fill_(10 * 0.485)
        conv2.weight.fill_(2.0)
        conv2.bias.fill_(-10.0)
    return teacher


def test_head_learns_a_simple_rule():
    torch.manual_seed(2)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(16, 32, 32, generator=g).repeat_interleave(1, 0)
    x = torch.nn.functional.avg_pool2d(x[:, None], 8).repeat_interleave(8, 2).repeat_interleave(8, 3)[:, 0]
    y = (x > 0.5).float()
    teacher = SliceTeacher(FrozenEncoder(nn.AvgPool2d(8), 3), hidden=8)
    hist = train_teacher_head(teacher, x, y, epochs=30, batch=8, lr=3e-2, size=(32, 32), generator=g, augment=False)
    assert hist[-1] < 0.5 * hist[0]


def test_pseudo_labels_of_a_bright_ball_match_it():
    D, H, W = 12, 48, 48
    z, yy, xx = torch.meshgrid(torch.arange(D).float(), torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    ball = (((z - 6) / 5) ** 2 + ((yy - 24) / 14) ** 2 + ((xx - 22) / 13) ** 2) <= 1
    image = torch.where(ball, 0.9, 0.1)
    out = pseudo_label_volume(_threshold_teacher(), image, draws=4, size=(48, 48),
                              generator=torch.Generator().manual_seed(3))
    prob = out["prob"].float()
    assert out["prob"].dtype == torch.float16 and prob.shape == (D, H, W)
    assert prob.min() >= 0 and prob.max() <= 1
    assert ((prob > 0) & (prob < 0.1)).sum() == 0  # post-processing: < 0.1 -> 0
    pred = prob > 0.5
    dice = 2 * (pred & ball).sum() / (pred.sum() + ball.sum())
    assert dice > 0.85
    assert torch.allclose(out["confidence"].float(), (1 - 2 * out["sigma"].float()).clamp(0, 1), atol=2e-3)
    with pytest.raises(ValueError, match="D, H, W"):
        pseudo_label_volume(_threshold_teacher(), image[0])


def test_teacher_file_round_trip(tmp_path):
    net = create("student", base=8)
    save_checkpoint(tmp_path / "enc.pt", net)
    spec = {"checkpoint": str(tmp_path / "enc.pt")}
    teacher = SliceTeacher(encoder_from_spec(spec), hidden=4)
    save_teacher(tmp_path / "teacher.pt", teacher, spec)
    again, state = load_teacher(tmp_path / "teacher.pt")
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(again(x), teacher.eval()(x), atol=1e-6)
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(ValueError, match="teacher file"):
        load_teacher(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="checkpoint"):
        encoder_from_spec({})


def test_an_epoch_has_the_requested_number_of_updates():
    from dtc.volume.teacher import _epoch_batches

    g = torch.Generator().manual_seed(4)
    one_pass = _epoch_batches(5, 2, None, g)
    assert sorted(torch.cat(one_pass).tolist()) == [0, 1, 2, 3, 4]
    drawn = _epoch_batches(3, 4, 7, g)
    assert len(drawn) == 7 and all(len(b) == 4 and int(b.max()) < 3 for b in drawn)
    steps = []
    teacher = SliceTeacher(FrozenEncoder(nn.AvgPool2d(8), 3), hidden=4)
    opt_step = torch.optim.Adam.step

    def counting(self, *a, **k):
        steps.append(1)
        return opt_step(self, *a, **k)

    torch.optim.Adam.step = counting
    try:
        train_teacher_head(teacher, torch.rand(2, 16, 16), torch.zeros(2, 16, 16), epochs=2, batch=4, size=(16, 16),
                           steps_per_epoch=3, generator=g)
    finally:
        torch.optim.Adam.step = opt_step
    assert len(steps) == 6
