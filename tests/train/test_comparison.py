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
def test_the_fair_test_on_a_tiny_budget_has_every_method_column_and_statistic(tmp_path):
    """The paper script as a user runs it (its own process, the installed package), on a CI budget."""
    out = tmp_path / "table"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "paper_table.py"), "--epochs", "2", "--seeds", "0", "1",
                    "--steps-per-epoch", "1", "--resynth-every", "1", "--synth-steps", "2", "--eval-synth-steps", "2",
                    "--test", "16", "--validation", "16", "--fresh", "1", "--patch-steps", "1", "--severities", "3",
                    "--out", str(out)], check=True, capture_output=True, cwd=tmp_path)
    text = (tmp_path / "table.md").read_text()
    data = json.loads((tmp_path / "table.json").read_text())
    methods = ("plain", "nullspace ε=0.01", "nullspace ε=0.03", "nullspace, resynthesized", "Gaussian, δ's norms",
               "Gaussian, δ's visibility", "random start, δ's norms", "FGSM training")
    for metric in ("nullspace size", "pooled CE", "PatchFool", "shifts", "FGSM 2/255", "PGD-10 2/255", "corruption acc"):
        assert metric in data["metrics"]
    header = "| model | " + " | ".join(data["metrics"]) + " |"
    assert header in text and "| untouched model | " in text
    for name in methods:
        assert f"| {name} | " in text
        assert set(data["runs"][name]) == {"0", "1"} and set(data["last"][name]) == {"0", "1"}
        assert data["runs"][name]["0"]["best epoch"] in (1, 2)
    # the controls trained on the nullspace run's δ norms, seed by seed; the visibility control on one norm
    for seed in ("0", "1"):
        norms = data["runs"]["nullspace ε=0.01"][seed]["train δ norms"]
        assert data["runs"]["Gaussian, δ's norms"][seed]["train δ norms"] == norms
        assert data["runs"]["random start, δ's norms"][seed]["train δ norms"] == norms
        assert data["runs"]["Gaussian, δ's visibility"][seed]["train δ norms"] == [data["matched_visibility_norm"]] * 2
    # one yardstick: every model of a seed is measured under the same starting-model δ, made once per seed
    assert len({data["runs"][m]["0"]["start δ norm"] for m in methods} | {data["default"]["start δ norm"]}) == 1
    assert len({data["runs"][m]["1"]["start δ norm"] for m in methods}) == 1
    # each epoch measured clean validation accuracy alone (the best-epoch rule's); the test measures the rest
    assert all(set(r) >= {"clean_acc"} and "fgsm_acc" not in r for r in data["runs"]["plain"]["0"]["history"])
    assert data["variants"] == ["nullspace ε=0.01", "nullspace ε=0.03", "nullspace, resynthesized"]
    for variant in data["variants"]:
        assert f"**{variant} minus each control**" in text
        cmp = data["comparisons"][variant]
        assert set(cmp["paired"]) == {"plain", "Gaussian, δ's norms", "Gaussian, δ's visibility",
                                      "random start, δ's norms", "FGSM training"}
        for metric in data["metrics"]:
            cell = cmp["paired"]["plain"][metric]
            assert cell["n"] == 2 and cell["ci_low"] <= cell["mean"] <= cell["ci_high"]
            assert ("p_adjusted" in cell) and (metric in ("FGSM", "pooled CE")) == (metric in cmp["primary"])
        boot = cmp["bootstrap"]["plain"]
        assert set(boot) == {"clean", "FGSM", "pooled CE", "PGD-10", "FGSM 2/255", "PGD-10 2/255", "PatchFool",
                             "shifts"} and boot["clean"]["n"] == 16
    per_image = data["per_image"]["plain"]["0"]
    assert len(per_image["clean"]) == 16 and len(data["reference_errors"]) == 16
    assert data["primary"] == ["FGSM", "pooled CE"] and "Holm" in data["comparisons"]["nullspace ε=0.01"]["correction"]
    assert "Primary measures (declared before the runs): FGSM, pooled CE" in text and "Holm-adjusted" in text
    assert "paired bootstrap over the 16 test scenes" in text and "(n 2)" in text
    assert (tmp_path / "table_bars.html").exists() and (tmp_path / "table_paired.html").exists()
    paired = (tmp_path / "table_paired.html").read_text()
    for name in ("nullspace ε=0.03 − plain", "nullspace, resynthesized − FGSM training"):  # every variant
        assert name in paired or json.dumps(name)[1:-1] in paired


@pytest.mark.slow
def test_the_fair_test_one_run_at_a_time_keeps_the_order_and_the_norms(tmp_path):
    """--jobs 1 (no worker processes): a control at δ's norms runs after its seed's nullspace run and takes its
    norms; the table lists the methods in the order asked, whatever order the runs ran in."""
    out = tmp_path / "table"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "paper_table.py"), "--jobs", "1", "--epochs", "1",
                    "--seeds", "0", "--steps-per-epoch", "1", "--synth-steps", "2", "--eval-synth-steps", "2",
                    "--test", "8", "--validation", "8", "--patch-steps", "1", "--severities", "3", "--methods",
                    "Gaussian, δ's norms", "plain", "nullspace ε=0.01", "--out", str(out)],
                   check=True, capture_output=True, cwd=tmp_path)
    data = json.loads((tmp_path / "table.json").read_text())
    assert list(data["runs"]) == ["Gaussian, δ's norms", "plain", "nullspace ε=0.01"]  # as asked
    norms = data["runs"]["nullspace ε=0.01"]["0"]["train δ norms"]
    assert data["runs"]["Gaussian, δ's norms"]["0"]["train δ norms"] == norms and data["args"]["jobs"] == 1


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


def test_paired_bootstrap_over_test_images():
    """The test images' own uncertainty: resampling images (the same draw for both models and every seed)."""
    import numpy as np

    from nullviz.train.comparison import paired_bootstrap

    right = {0: [1] * 50, 1: [1] * 50}
    wrong = {0: [0] * 50, 1: [0] * 50}
    d = paired_bootstrap(right, wrong)
    assert (d.mean, d.ci_low, d.ci_high, d.p_value, d.n) == (1.0, 1.0, 1.0, 0.0, 50)
    same = paired_bootstrap(right, right)
    assert (same.mean, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    # one image of 20 differs, in one of two seeds: full-set difference (1/20)/2; a resample leaves it out
    # with probability (19/20)^20 ≈ 0.36, so the interval reaches 0 and no resample goes below it
    v = {0: [1] + [0] * 19, 1: [0] * 20}
    c = {0: [0] * 20, 1: [0] * 20}
    d = paired_bootstrap(v, c, scale=100, resamples=4000, seed=3)
    assert d.mean == pytest.approx(2.5) and d.ci_low == 0.0 and d.ci_high > 2.5 and d.p_value > 0.5
    # by hand: the same resamples, drawn as the function draws them
    idx = np.random.default_rng(3).integers(0, 20, size=(4000, 20))
    by_hand = 100 * (np.array(v[0])[idx].mean(1) + np.array(v[1])[idx].mean(1)) / 2
    assert d.ci_high == pytest.approx(np.percentile(by_hand, 97.5))
    # a pooled ratio: Σ errors / Σ the reference's errors
    ref = [2, 0, 1, 1]
    r = paired_bootstrap({0: [1, 0, 1, 0]}, {0: [2, 0, 1, 1]}, denominator=ref, scale=100)
    assert r.mean == pytest.approx(100 * (2 - 4) / 4)
    with pytest.raises(InvalidParameterError):
        paired_bootstrap({0: [1, 0]}, {1: [1, 0]})
    with pytest.raises(InvalidParameterError):
        paired_bootstrap({0: [1, 0]}, {0: [1, 0, 1]})


def test_the_paired_figure_draws_every_variant():
    runs = {"a": {0: {"acc": 0.9}, 1: {"acc": 0.92}}, "b": {0: {"acc": 0.91}, 1: {"acc": 0.9}},
            "plain": {0: {"acc": 0.88}, 1: {"acc": 0.9}}}
    cmps = [compare_methods({k: runs[k] for k in (v, "plain")}, ["acc"], v) for v in ("a", "b")]
    fig = figures.paired_difference_bars(cmps)
    assert [t.name for t in fig.data] == ["a − plain", "b − plain"] and "a, b" in fig.layout.title.text
