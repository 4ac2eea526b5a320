"""Every simulator knob is reachable from configs (data.benchmark, data.synth.*), and stage-1 stills are
clean by default while the frames the students and the test split see carry the events."""
from __future__ import annotations

import pytest

from dtc.data.synth import BENCHMARKS, EVENT_KINDS
from dtc.engine import ConfigError, load_config
from dtc.engine.data import build_dataset

TINY = ["data.height=48", "data.width=64", "data.num_videos=6", "data.frames=12"]


def test_every_synth_knob_reaches_the_simulator():
    cfg = load_config(None, [*TINY, "stage=student", "teacher_checkpoint=x.pt", "data.synth.gain_rate=40",
                             "data.synth.noise=2.5", "data.synth.views=[sagittal]"])
    ds = build_dataset(cfg, "train")
    assert ds.config.gain_rate == 40 and ds.config.noise == 2.5 and ds.config.views == ("sagittal",)
    flags = [bool(ds[i]["event"].any()) for i in range(len(ds))]
    assert any(flags) and ds[0]["event"].shape == (3,)


def test_the_events_benchmark_keeps_teacher_stills_clean_unless_asked():
    teacher = load_config(None, [*TINY, "stage=teacher", "data.benchmark=events"])
    train, val = build_dataset(teacher, "train"), build_dataset(teacher, "val")
    assert train.config.sweep_speed == BENCHMARKS["events"]["sweep_speed"], "motion is kept, events are not"
    assert all(getattr(train.config, f"{k}_rate") == 0 for k in EVENT_KINDS)
    assert val.config.jerk_rate == BENCHMARKS["events"]["jerk_rate"]
    with_events = load_config(None, [*TINY, "stage=teacher", "data.benchmark=events", "data.events_in_stills=true"])
    assert build_dataset(with_events, "train").config.gain_rate == BENCHMARKS["events"]["gain_rate"]


@pytest.mark.parametrize("override,named", [
    ("data.synth.gain_rate=-1", "gain_rate"),
    ("data.synth.bogus=1", "bogus"),
    ("data.synth.height=64", "height"),
    ("data.synth.jerk_strength=fast", "jerk_strength"),
    ("data.benchmark=stormy", "data.benchmark"),
])
def test_bad_simulator_settings_are_refused_before_training(override, named):
    cfg = load_config(None, [*TINY, "stage=teacher", override])
    with pytest.raises(ConfigError, match=named):
        cfg.validate()
