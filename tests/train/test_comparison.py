"""Method comparisons over seeds (the paper table and the Finetune page share them)."""

import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT

from nullviz import figures
from nullviz.core.errors import InvalidParameterError
from nullviz.train.comparison import compare_methods, paired_difference, summarize


def test_summary_is_the_t_interval_by_hand():
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s.mean == 3.0 and s.std == pytest.approx(math.sqrt(2.5)) and s.n == 5
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4)
    assert (s.ci_low, s.ci_high) == (pytest.approx(3 - half), pytest.approx(3 + half))
    one = summarize([0.7])  # one value says nothing about its spread: no interval, no test (not a zero-width one)
    assert one.ci_low is None and one.ci_high is None and one.p_value is None and not one.has_interval
    assert one.n == 1 and one.mean == 0.7
    with pytest.raises(InvalidParameterError):
        summarize([])


def test_missing_values_are_counted_not_dropped_silently():
    s = summarize([0.5, None, float("nan"), 0.7])
    assert s.n == 2 and s.n_missing == 2 and s.to_dict()["n_missing"] == 2


def test_paired_t_test_by_hand():
    """d = (0.05, 0.02, 0.05): t = mean / (sd / √3) with 2 degrees of freedom."""
    from scipy.stats import ttest_1samp

    d = summarize([0.05, 0.02, 0.05])
    assert d.p_value == pytest.approx(ttest_1samp([0.05, 0.02, 0.05], 0).pvalue, rel=1e-9)


def test_holm_on_a_worked_example():
    """p = (0.01, 0.04, 0.03, 0.005) over m = 4: sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06,
    0.04·1 = 0.04 → kept monotone: 0.06; None stays outside the family."""
    from nullviz.train.comparison import holm

    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005, "e": None})
    assert adj == {"d": pytest.approx(0.02), "a": pytest.approx(0.03), "c": pytest.approx(0.06),
                   "b": pytest.approx(0.06), "e": None}
    assert holm({"x": 0.6, "y": 0.5}) == {"y": 1.0, "x": 1.0}  # capped at 1


def test_primary_measures_are_unadjusted_and_the_rest_holm_adjusted():
    runs = {"nullspace": {s: {"acc": 0.90 + 0.01 * s, "fgsm": 0.5 + 0.02 * s, "mce": 1.0} for s in range(4)},
            "baseline": {s: {"acc": 0.88 + 0.012 * s, "fgsm": 0.47 + 0.02 * s, "mce": 1.0 + 0.01 * s}
                         for s in range(4)},
            "gaussian": {s: {"acc": 0.89 + 0.01 * s, "fgsm": 0.5 + 0.018 * s, "mce": 0.99} for s in range(4)}}
    cmp = compare_methods(runs, ["acc", "fgsm", "mce"], "nullspace", primary=["fgsm"])
    adj = cmp.adjusted_p()
    raw = {(c, m): cmp.difference(c, m).p_value for c in cmp.controls for m in cmp.metrics}
    assert adj[("baseline", "fgsm")] == raw[("baseline", "fgsm")]  # primary: as it is
    from nullviz.train.comparison import holm

    family = holm({k: v for k, v in raw.items() if k[1] != "fgsm"})
    assert all(adj[k] == family[k] for k in family) and len(family) == 4
    d = cmp.to_dict()
    assert d["primary"] == ["fgsm"] and d["secondary"] == ["acc", "mce"] and "Holm" in d["correction"]
    assert d["paired"]["gaussian"]["acc"]["p_adjusted"] == adj[("gaussian", "acc")]
    with pytest.raises(InvalidParameterError, match="primary"):
        compare_methods(runs, ["acc"], "nullspace", primary=["nope"])


def test_one_seed_draws_no_error_bars():
    runs = {"nullspace": {0: {"acc": 0.9}}, "baseline": {0: {"acc": 0.88}}}
    bars = figures.method_bars(compare_methods(runs, ["acc"], "nullspace"))
    assert list(bars.data[0].error_y.array) == [0] and list(bars.data[0].error_y.arrayminus) == [0]


def test_paired_difference_pairs_by_seed():
    a = {0: 0.9, 1: 0.8, 2: 0.95, 7: 0.5}
    b = {0: 0.85, 1: 0.78, 2: 0.9}  # seed 7 has no partner: left out
    d = paired_difference(a, b)
    assert d.n == 3 and d.mean == pytest.approx((0.05 + 0.02 + 0.05) / 3)
    with pytest.raises(InvalidParameterError):
        paired_difference({0: 1.0}, {1: 1.0})


def test_compare_methods_and_figures():
    runs = {"nullspace": {0: {"acc": 0.9}, 1: {"acc": 0.92}, 2: {"acc": 0.91}},
            "baseline": {0: {"acc": 0.88}, 1: {"acc": 0.9}, 2: {"acc": 0.87}},
            "gaussian": {0: {"acc": 0.9}, 1: {"acc": 0.93}, 2: {"acc": 0.9}}}
    cmp = compare_methods(runs, ["acc"], "nullspace")
    assert cmp.controls == ["baseline", "gaussian"]
    assert cmp.difference("baseline", "acc").mean == pytest.approx(0.0266666, rel=1e-4)
    d = cmp.to_dict()
    assert set(d["paired"]) == {"baseline", "gaussian"} and d["summary"]["nullspace"]["acc"]["n"] == 3
    json.dumps(d)
    bars = figures.method_bars(cmp, scale={"acc": 100})
    assert [t.name for t in bars.data] == ["nullspace", "baseline", "gaussian"]
    assert bars.data[0].y[0] == pytest.approx(91.0)
    paired = figures.paired_difference_bars(cmp)
    assert [t.name for t in paired.data] == ["nullspace − baseline", "nullspace − gaussian"]
    # up is better for every measure: an error is drawn as its reduction, its interval flipped with it
    err_runs = {m: {s: {"acc": r["acc"], "err": 1 - r["acc"]} for s, r in v.items()} for m, v in runs.items()}
    both = compare_methods(err_runs, ["acc", "err"], "nullspace")
    flipped = figures.paired_difference_bars(both, lower_is_better=("err",))
    acc_bar, err_bar = flipped.data[0].y
    assert err_bar == pytest.approx(acc_bar) and err_bar > 0
    assert list(flipped.data[0].x) == ["acc", "err (reduction)"]
    assert flipped.data[0].error_y.array[1] == pytest.approx(flipped.data[0].error_y.array[0])
    assert "up is better for every measure" in flipped.layout.title.text
    with pytest.raises(InvalidParameterError):
        compare_methods(runs, ["acc"], "adversarial")


@pytest.mark.slow
def test_paper_table_on_a_tiny_budget_has_every_column_and_the_paired_intervals(tmp_path):
    """The script as a user runs it (its own process, the installed package)."""
    out = tmp_path / "table"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "paper_table.py"), "--epochs", "1", "--seeds", "0", "1",
                    "--steps-per-epoch", "1", "--synth-steps", "2", "--limit", "24", "--fresh", "1",
                    "--severities", "3", "--out", str(out)], check=True, capture_output=True, cwd=tmp_path)
    text = (tmp_path / "table.md").read_text()
    data = json.loads((tmp_path / "table.json").read_text())
    methods = ("baseline", "gaussian", "random_start", "adversarial", "nullspace", "nullspace λ=2")
    assert "nullspace size" in data["metrics"] and "pooled CE" in data["metrics"] and "PatchFool" in data["metrics"]
    header = "| model | " + " | ".join(data["metrics"]) + " |"
    assert header in text
    for name in methods:
        assert f"| {name} | " in text
    for variant in ("nullspace", "nullspace λ=2"):
        assert f"**{variant} minus each control**" in text
    assert set(data["runs"]) == set(methods) and set(data["runs"]["baseline"]) == {"0", "1"}
    for control in ("baseline", "gaussian", "random_start", "adversarial"):
        for metric in data["metrics"]:
            cell = data["paired"][control][metric]
            assert cell["n"] == 2 and cell["ci_low"] <= cell["mean"] <= cell["ci_high"]
            assert ("p_adjusted" in cell) and (metric in ("FGSM", "pooled CE")) == (metric in data["primary"])
    assert data["primary"] == ["FGSM", "pooled CE"] and "Holm" in data["correction"]
    assert "Primary measures (declared before the runs): FGSM, pooled CE" in text and "Holm-adjusted" in text
    assert "(n 2)" in text  # n shown everywhere
    assert (tmp_path / "table_bars.html").exists() and (tmp_path / "table_paired.html").exists()


def test_difference_figures_say_when_a_change_is_float32_rounding():
    """Difference maps used to be auto-scaled, painting rounding (1e-8) in full colour."""
    import numpy as np

    clean = np.linspace(0, 0.4, 16).reshape(4, 4)
    rounding = clean + 3e-9 * np.sign(np.sin(np.arange(16))).reshape(4, 4)
    fig = figures.map_triplet(clean, rounding)
    titles = [a.text for a in fig.layout.annotations]
    assert titles[2].replace("<br>", " ").startswith("difference: zero to float32 precision")  # verdict on line 2
    diff = fig.data[2]
    assert (diff.zmin, diff.zmax) == (-0.4, 0.4)  # on ± the clean range, not ± the rounding
    real = figures.map_triplet(clean, clean + 0.02)
    assert "5.0% of the clean range" in [a.text for a in real.layout.annotations][2]
    grid = figures.attention_grid(np.full((2, 2, 3, 3), 1e-9), title="noised − clean", symmetric_range=0.5)
    assert "zero to float32 precision" in grid.layout.title.text and grid.data[0].zmax == 0.5
