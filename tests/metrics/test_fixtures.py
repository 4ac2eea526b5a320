"""Cross-checks against published results: the SUN-SEG toolbox table and PySODMetrics' expected values."""
import json

import numpy as np
import pytest

from dtc.metrics import sunseg
from dtc.metrics.functional import cpp_available
from dtc.metrics.objects import SUNSegMetric

# The toolbox's printed table for 2019-TPAMI-COSNet on the CVC-ColonDB-300 cases 7 and 8
# (reference_result_a718e53.txt), column by column.
TOOLBOX_TABLE = {
    "Smeasure": "0.642", "wFmeasure": "0.341", "MAE": "0.015", "adpEm": "0.85", "meanEm": "0.528", "maxEm": "0.848",
    "adpFm": "0.53", "meanFm": "0.405", "maxFm": "0.561", "meanSen": "0.25", "maxSen": "1.0", "meanSpe": "0.817",
    "maxSpe": "0.833", "meanDic": "0.317", "maxDic": "0.516", "meanIoU": "0.236", "maxIoU": "0.411",
}
BACKENDS = ["numpy", pytest.param("cpp", marks=pytest.mark.skipif(not cpp_available(), reason="dtc._C not built")),
            "torch"]


def _read_table(path):
    text = path.read_text().splitlines()
    header = [c.strip() for c in text[1].split("|")[1:-1]]
    values = [c.strip() for c in text[3].split("|")[1:-1]]
    return dict(zip(header, values))


def _sunseg_dirs(root):
    return root / "Pred" / "2019-TPAMI-COSNet" / "CVC-ColonDB-300", root / "GT" / "CVC-ColonDB-300" / "GT", root


def test_table_constants_match_fixture_file(sunseg_fixtures_dir):
    *_, root = _sunseg_dirs(sunseg_fixtures_dir)
    table = _read_table(root / "reference_result_a718e53.txt")
    assert {k: table[k] for k in TOOLBOX_TABLE} == TOOLBOX_TABLE


@pytest.mark.parametrize("backend", BACKENDS)
def test_sunseg_toolbox_table(sunseg_fixtures_dir, backend):
    """Every printed number of the a718e53 table, which rounded each case's scalar scores first."""
    pred_root, gt_root, _ = _sunseg_dirs(sunseg_fixtures_dir)
    per_case, overall = sunseg.evaluate_folders(pred_root, gt_root, backend=backend, progress=False,
                                                case_decimals=3)
    assert sorted(per_case) == ["7", "8"]
    assert dict(sunseg.round_like_toolbox(overall)) == {k: "{:.3f}".format(float(v)) for k, v in TOOLBOX_TABLE.items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_unrounded_protocol_differs_only_in_weighted_f(sunseg_fixtures_dir, backend):
    """Without the per-case rounding (the later vps_evaluator.py) the weighted F prints 0.340, not 0.341:
    the rounding, not the metric, explains the table's value; every other column is unchanged."""
    pred_root, gt_root, _ = _sunseg_dirs(sunseg_fixtures_dir)
    _, overall = sunseg.evaluate_folders(pred_root, gt_root, backend=backend, progress=False)
    printed = sunseg.round_like_toolbox(overall)
    assert overall["wFmeasure"] == pytest.approx(0.3404958, abs=1e-7)
    assert printed["wFmeasure"] == "0.340"
    for column, expected in TOOLBOX_TABLE.items():
        if column != "wFmeasure":
            assert float(printed[column]) == float(expected), (column, overall[column])


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_case_decimals_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="case_decimals"):
        SUNSegMetric(case_decimals=bad)
    with pytest.raises(ValueError, match="case_decimals"):
        sunseg.per_case_protocol({"v": []}, case_decimals=bad)


def test_dropping_end_frames_matters(sunseg_fixtures_dir):
    """The protocol is not vacuous: keeping the first/last frames changes the printed table."""
    pred_root, gt_root, _ = _sunseg_dirs(sunseg_fixtures_dir)
    _, overall = sunseg.evaluate_folders(pred_root, gt_root, drop_ends=False, backend="numpy", progress=False)
    printed = sunseg.round_like_toolbox(overall)
    assert float(printed["Smeasure"]) != float(TOOLBOX_TABLE["Smeasure"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_metric_object_reproduces_toolbox(sunseg_fixtures_dir, backend):
    """Feeding the frames one by one (shuffled order, float probabilities) gives the same per-case protocol."""
    pred_root, gt_root, _ = _sunseg_dirs(sunseg_fixtures_dir)
    cases = sunseg.discover_pairs(pred_root, gt_root)
    items = [(case, i, p, g) for case, pairs in cases.items() for i, (_, p, g) in enumerate(pairs)]
    rng = np.random.default_rng(0)
    metric = SUNSegMetric(backend=backend, case_decimals=3)
    for k in rng.permutation(len(items)):
        case, i, pf, gf = items[k]
        prob, mask = sunseg.prepare_frame(sunseg.read_gray(pf), sunseg.read_gray(gf), normalize=None)
        metric(prob, mask, video_id=case, frame_index=i)
    _, expected = sunseg.evaluate_folders(pred_root, gt_root, backend="numpy", progress=False, case_decimals=3)
    got = metric.aggregate()["overall"]
    for column in expected:
        assert got[column] == pytest.approx(expected[column], abs=1e-12), column


@pytest.mark.parametrize("backend", BACKENDS)
def test_pysodmetrics_expected_values(fixtures_dir, backend):
    root = fixtures_dir / "pysodmetrics"
    expected = json.loads((root / "version_performance.json").read_text())["v1_3_0"]
    from dtc.metrics.functional import sunseg_frame

    records = []
    for mask_file in sorted((root / "masks").iterdir()):
        pred, gt = sunseg.prepare_frame(sunseg.read_gray(root / "preds" / mask_file.name), sunseg.read_gray(mask_file))
        records.append(sunseg_frame(pred, gt, backend=backend))
    assert len(records) == 3
    avg = sunseg.mean_records(records)  # sample-based mean over the 3 pairs, no sequence protocol
    got = {
        "Smeasure": avg["Smeasure"], "wFmeasure": avg["wFmeasure"], "MAE": avg["MAE"], "adpEm": avg["adpEm"],
        "meanEm": avg["Em"].mean(), "maxEm": avg["Em"].max(), "adpFm": avg["adpFm"], "meanFm": avg["Fm"].mean(),
        "maxFm": avg["Fm"].max(),
    }
    for key, value in got.items():
        assert value == pytest.approx(expected[key], abs=1e-6), key


def test_pysod_empty_mask_edge_case(fixtures_dir):
    root = fixtures_dir / "pysodmetrics"
    pred, gt = sunseg.prepare_frame(sunseg.read_gray(root / "preds" / "aerial-1867541__340.png"),
                                    sunseg.read_gray(root / "masks" / "aerial-1867541__340.png"))
    assert not gt.any()
    from dtc.metrics.reference import s_measure, weighted_f_measure

    assert s_measure(pred, gt) == pytest.approx(1 - pred.mean())
    assert weighted_f_measure(pred, gt) == 0.0
