"""Figures that tell the truth: units on every colour bar, rounding said in words, legends that never squeeze."""

import numpy as np
import pytest

from nullviz import figures


def _colorbar_titles(fig):
    return [t.colorbar.title.text for t in fig.data
            if t.type == "heatmap" and t.showscale is not False and t.colorbar.title.text is not None]


def test_every_heatmap_figure_has_a_colour_bar_with_units():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 2, 4, 4))
    built = {
        "map_triplet": figures.map_triplet(maps[0, 0], maps[0, 1]),
        "attention_grid": figures.attention_grid(maps),
        "attention_grid_diff": figures.attention_grid(maps - maps, symmetric_range=1.0),
        "overlay": figures.overlay(rng.random((32, 32, 3)), maps[0, 0]),
        "attribution_pair": figures.attribution_pair(maps[0, 0], maps[1, 0], "saliency"),
        "patch_norms": figures.patch_norm_heatmap(maps[0, 0]),
        "matrix": figures.attention_matrix(rng.random((17, 17)), 1),
    }
    for name, fig in built.items():
        titles = _colorbar_titles(fig)
        assert titles and all(titles), name
    assert _colorbar_titles(built["attention_grid"]) == ["attention weight"]  # one shared scale, one bar
    assert _colorbar_titles(built["attention_grid_diff"]) == ["Δ attention weight"]


def test_equal_patch_norms_are_said_in_words_not_painted():
    norms = np.full((4, 4), 1.0) + np.random.default_rng(0).uniform(-1e-7, 1e-7, (4, 4))
    fig = figures.patch_norm_heatmap(norms)
    assert "equal to float32 precision" in fig.layout.title.text
    assert fig.data[0].zmin == 0.0 and fig.data[0].zmax == pytest.approx(norms.max())
    varied = figures.patch_norm_heatmap(np.linspace(0.5, 2, 16).reshape(4, 4))
    assert varied.layout.title.text == "noise norm per patch"


def test_legends_never_squeeze_the_plot():
    path = "/tmp/nullviz/jobs/0123456789abcdef/nullspace-seed3/checkpoints/model.safetensors"
    fig = figures.training_curves({path: {"epoch": [1, 2], "clean_acc": [0.5, 0.6]}}, "epoch", ["clean_acc"])
    trace = fig.data[0]
    assert len(trace.name) <= figures.LEGEND_NAME_CHARS and trace.name.startswith("…/model.safet")
    assert trace.name.endswith("clean accuracy")  # words, not the key 'clean_acc'
    assert path in trace.hovertemplate  # the full name on hover
    assert fig.layout.legend.orientation == "h" and fig.layout.legend.y < 0  # below the plot, not beside it
    assert figures.short_label("baseline · clean_acc") == "baseline · clean_acc"


def test_few_epochs_are_labelled_points_on_a_sensible_axis():
    one = figures.training_curves({"baseline": {"epoch": [1], "clean_acc": [0.93], "fgsm_acc": [0.41]}}, "epoch",
                                  ["clean_acc", "fgsm_acc"], "held-out accuracy", "accuracy")
    assert [t.name for t in one.data] == ["baseline · clean accuracy", "baseline · FGSM accuracy"]
    assert "text" in one.data[0].mode and list(one.data[0].text) == ["93.0%"]
    assert tuple(one.layout.xaxis.range) == (0.5, 1.5) and one.layout.xaxis.dtick == 1  # not an axis of 0–2
    assert tuple(one.layout.yaxis.range) == (0, 1.08)
    many = figures.training_curves({"b": {"epoch": list(range(1, 9)), "clean_acc": [0.5] * 8}}, "epoch", ["clean_acc"])
    assert "text" not in many.data[0].mode
    long = figures.short_label("x" * 80)
    assert len(long) == figures.LEGEND_NAME_CHARS and "…" in long


def test_depth_and_statistics_figures_number_blocks_from_one():
    from nullviz.inspection.attention import HeadStatistics, NoiseContrast

    depth = figures.depth_curve({"a": [1.0, 2.0, 3.0]})
    assert list(depth.data[0].x) == [1, 2, 3]
    stats = HeadStatistics(np.ones((3, 2)), np.ones((3, 2)), np.ones((3, 2)), np.ones((3, 2)), float(np.log(17)))
    fig = figures.head_statistics_plot(stats)
    assert sorted(set(fig.data[0].x)) == [1, 2, 3]
    contrast = NoiseContrast(["exact", "random"], [1.0, 1.0], ["input", "input"], np.array([[0.0] * 4, [0.1] * 4]),
                             np.array([[0.0] * 3, [0.2] * 3]))
    fig = figures.noise_contrast_plot(contrast)
    assert list(fig.data[1].x) == [1, 2, 3] and list(fig.data[0].x) == [0, 1, 2, 3]
    assert min(fig.data[0].y) == pytest.approx(1e-9)  # exact zeros drawn at the floor the title names
    box = figures.change_distribution(np.zeros((5, 3)), "attention change", "TV")
    assert "15 values ≤ 1e-9" in box.layout.title.text and [t.name for t in box.data] == ["1", "2", "3"]


def test_synthesis_chart_draws_a_negative_loss_and_tells_its_lines_apart():
    """With λ > 0 the loss is negative: it has a linear axis of its own (on the log axis it had no line);
    ε and agreement differ in colour and dash; agreement ticks are round percentages."""
    fig = figures.synthesis_curve([0, 1, 2], [0.4, -0.5, -1.2], [0.05, 0.02, 0.004], [0.9, 0.95, 1.0], tol=0.01)
    by_name = {t.name: t for t in fig.data}
    loss = next(t for n, t in by_name.items() if n.startswith("loss"))
    assert loss.yaxis == "y3" and fig.layout.yaxis3.type != "log" and min(loss.y) < 0
    eps = next(t for n, t in by_name.items() if n.startswith("tolerance ε"))
    agree = by_name["top-1 agreement"]
    assert (eps.line.color, eps.line.dash) != (agree.line.color, agree.line.dash)
    assert fig.layout.yaxis.type == "log" and list(fig.layout.yaxis2.tickvals) == [0, 0.25, 0.5, 0.75, 1]


def test_topk_bars_label_every_probability():
    fig = figures.topk_bars([0.998, 0.001, 0.0005, 0.0005], [0.997, 0.002, 0.0005, 0.0005], ["a", "b", "c", "d"], k=3)
    assert list(fig.data[0].text) == ["99.8%", "0.1%", "5e-04"] and fig.data[0].textposition == "outside"


def test_topk_bars_read_long_class_names_along_the_bars():
    """ImageNet's names under columns were drawn vertically and squashed the bars to a strip: the bars are
    horizontal, the most likely class on top, names cut to TOPK_NAME_CHARS with the full name in the hover."""
    names = [f"class number {i}, a long ImageNet-style name with synonyms" for i in range(1000)]
    probs = np.full(1000, 0.5 / 998)
    probs[[7, 3]] = 0.3, 0.2
    fig = figures.topk_bars(probs, probs[::-1], names, k=3)
    bars = fig.data[0]
    assert bars.orientation == "h" and fig.layout.yaxis.autorange == "reversed"
    assert list(bars.customdata)[:2] == [names[7], names[3]]  # the most likely first (drawn on top)
    assert all(len(label) <= figures.TOPK_NAME_CHARS for label in bars.y)
    assert len(bars.y) == 4  # the top 3 and the noised top-1


def test_heads_are_numbered_from_one_like_blocks():
    grid = figures.attention_grid(np.random.default_rng(0).random((2, 3, 4, 4)), title="clean")
    titles = [a.text for a in grid.layout.annotations]
    assert "block 1 · head 1" in titles and "block 2 · head 3" in titles and not any("head 0" in t for t in titles)


def test_readable_numbers_have_no_negative_zero():
    assert [str(v) for v in figures.readable([-1e-9, 2.00004, -0.5])] == ["0.0", "2.0", "-0.5"]


def test_grids_and_matrices_keep_square_cells_on_exactly_their_tokens():
    """The attention matrix's axes span its tokens and nothing else (they started at −20 / −50 when the aspect
    lock widened the range); patch-grid subplots keep square cells by shrinking their domain."""
    m = np.full((17, 17), 1 / 17)
    fig = figures.attention_matrix(m, 1)
    assert tuple(fig.layout.xaxis.range) == (-0.5, 16.5) and tuple(fig.layout.yaxis.range) == (16.5, -0.5)
    assert fig.layout.yaxis.scaleanchor == "x" and fig.layout.xaxis.constrain == "domain"
    grid = figures.attention_grid(np.random.default_rng(0).random((2, 3, 4, 4)))
    assert [grid.layout[f"yaxis{'' if i == 1 else i}"].scaleanchor for i in range(1, 7)] == \
        ["x", "x2", "x3", "x4", "x5", "x6"]
    triplet = figures.map_triplet(np.eye(4), np.eye(4))
    assert triplet.layout.yaxis3.scaleanchor == "x3"
    assert triplet.layout.annotations[2].text.startswith("difference:<br>")  # its verdict on a line of its own


def test_spectrum_labels_sit_in_opposite_corners():
    """'rank r, nullity n' and 'rtol·σ_max' overlapped at the top right on a flat spectrum (ViT-S/16)."""
    fig = figures.singular_spectrum([1.0] * 384, 384, 1e-5, 768)
    positions = {a.text.split(" ")[0]: (a.yanchor, a.xanchor) for a in fig.layout.annotations}
    assert positions["rank"] != positions["rtol·σ_max"]
    assert fig.layout.annotations[0].x != fig.layout.annotations[1].x


def test_line_labels_on_log_axes_sit_on_their_lines():
    """plotly put an add_hline label of a log axis at the raw value: 'rtol·σ_max = 7.36e-05' at σ ≈ 1, the
    frontier's 'ε = 0.01' far above its line. The label's y is the line's, in the axis' log units."""
    s = np.geomspace(12.0, 1e-3, 48)
    fig = figures.singular_spectrum(s, 48, 7.36e-05 / 12.0, 48)
    label = next(a for a in fig.layout.annotations if a.text.startswith("rtol"))
    line = next(sh for sh in fig.layout.shapes if sh.y0 == sh.y1)
    assert label.yref == "y" and label.y == pytest.approx(np.log10(line.y0)) and line.y0 == pytest.approx(7.36e-05)
    sanity = figures.sanity_bars([{"method": "a", "patch_change": 1e-8, "map_change": 1e-6}], 1e-5)
    label = sanity.layout.annotations[0]
    assert label.y == pytest.approx(-5.0) and label.yanchor == "bottom"  # above its line, on it


def test_rounding_is_not_drawn_as_structure_in_the_depth_curve():
    """Exact noise moves the tokens by 1.5e-7…5.5e-7 (float32 rounding): on a log axis tied to the clean scale
    they lie flat near its floor and the title says what they are; a real change keeps its own title."""
    rounding = figures.depth_curve({"repr": [1.5e-7, 5.5e-7, 3e-7]}, "change per block", log_y=True, scale=1.0)
    assert tuple(rounding.layout.yaxis.range) == (np.log10(figures.CHANGE_FLOOR), 0.1)
    assert "float32 rounding only (at most 6e-07)" in rounding.layout.title.text
    real = figures.depth_curve({"repr": [1e-3, 0.2, 0.5]}, "change per block", log_y=True, scale=1.0)
    assert real.layout.title.text == "change per block"
    assert list(figures.depth_curve({"tv": [0.0, 1e-8]}, log_y=True, scale=1.0).data[0].y)[0] == figures.CHANGE_FLOOR


def test_smoothing_is_tensorboards_debiased_moving_average():
    from nullviz.figures import smooth

    assert smooth([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]
    s = smooth([2.0, 2.0, 2.0], 0.9)
    assert s == pytest.approx([2.0, 2.0, 2.0])  # debiased: a constant stays itself from the first point
    assert smooth([1.0, None, 3.0], 0.5) == pytest.approx([1.0, None, (0.25 * 1 + 0.5 * 3) / 0.75])
    with pytest.raises(ValueError):
        smooth([1.0], 1.0)


def test_training_curves_best_star_log_axis_and_all_runs_csv():
    import csv
    import io

    from nullviz.figures import training_curves
    from nullviz.train.logger import records_csv

    runs = {"a": {"step": [1, 2, 3, 4], "loss": [3.0, 1.0, 2.0, 1.5]}, "b": {"step": [1, 2, 3, 4], "loss": [2.0] * 4}}
    fig = training_curves(runs, "step", ["loss"], smoothing=0.5, log_y=True, best="min")
    stars = [t for t in fig.data if t.marker.symbol == "star"]
    assert [(t.x[0], t.y[0]) for t in stars] == [(2, 1.0), (1, 2.0)] and fig.layout.yaxis.type == "log"
    assert len(fig.data) == 6  # per run: raw, smoothed, best
    text = records_csv({"a": [{"kind": "step", "step": 1, "loss": 2.5}, {"kind": "epoch", "epoch": 1, "clean_acc": 0.5,
                                                                          "delta_acc_seeds": [0.1, 0.2]}],
                        "b": [{"kind": "step", "step": 1, "loss": 1.5}]})
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["run", "kind", "step", "loss", "epoch", "clean_acc"]  # lists are left out
    assert [(r["run"], r["kind"]) for r in rows] == [("a", "step"), ("a", "epoch"), ("b", "step")]
    assert rows[1]["clean_acc"] == "0.5" and rows[2]["loss"] == "1.5"


def test_sanity_bars_draw_both_resolutions_on_a_log_axis_with_the_pass_line():
    from nullviz.figures import sanity_bars

    fig = sanity_bars([{"method": "a", "patch_change": 0.0, "map_change": 2e-2},
                       {"method": "b", "patch_change": 3e-6, "map_change": 3e-6}], 1e-4, {"a": "A"})
    assert fig.layout.yaxis.type == "log" and [t.name for t in fig.data] == ["per patch (what the ViT reads)",
                                                                            "per pixel"]
    assert list(fig.data[0].x) == ["A", "b"] and fig.data[0].y[0] == 1e-9  # 0 drawn at the axis floor
    assert any(shape.y0 == 1e-4 for shape in fig.layout.shapes)


def test_patch_gallery_shows_exactly_the_picked_patches():
    """Each picked (image, row, column) is the image's own p×p patch, enlarged, with its caption; a pick outside
    the images is refused."""
    images = np.zeros((2, 8, 8, 3))
    images[1, 4:8, 0:4] = 1.0  # image 1, patch (1, 0) is white; everything else black
    fig = figures.patch_gallery(images, [(1, 1, 0), (0, 0, 1)], 4, ["white", "black"])
    assert [a.text for a in fig.layout.annotations] == ["white", "black"]
    assert np.asarray(fig.data[0].z).shape == (4, 4, 3)
    assert np.asarray(fig.data[0].z).min() == 255 and np.asarray(fig.data[1].z).max() == 0
    for bad in ([], [(2, 0, 0)], [(0, 2, 0)]):
        with pytest.raises(ValueError):
            figures.patch_gallery(images, bad, 4)


def test_seeds_of_one_method_are_one_mean_line_over_a_band():
    """Two seeds of nullspace become their mean over a lowest–highest band (the shorter run counts where it
    reached); a method with one run and an unrelated name stay lines of their own; without ``bands`` every
    seed is a line."""
    from nullviz.figures import seed_groups, seed_spread, training_curves

    assert seed_groups(["nullspace-seed0", "baseline", "nullspace-seed1", "a-seedling"]) == {
        "nullspace": ["nullspace-seed0", "nullspace-seed1"], "baseline": ["baseline"], "a-seedling": ["a-seedling"]}
    runs = {"nullspace-seed0": {"epoch": [1, 2, 3], "clean_acc": [0.5, 0.6, 0.7]},
            "nullspace-seed1": {"epoch": [1, 2], "clean_acc": [0.7, 0.8]},
            "baseline": {"epoch": [1, 2, 3], "clean_acc": [0.4, 0.5, None]}}
    xs, mean, lo, hi, n = seed_spread([runs["nullspace-seed0"], runs["nullspace-seed1"]], "epoch", "clean_acc")
    assert xs == [1, 2, 3] and mean == pytest.approx([0.6, 0.7, 0.7]) and lo == [0.5, 0.6, 0.7]
    assert hi == [0.7, 0.8, 0.7] and n == [2, 2, 1]
    fig = training_curves(runs, "epoch", ["clean_acc"], bands=True)
    band = [t for t in fig.data if t.fill == "toself"]
    assert len(band) == 1 and list(band[0].y) == [0.7, 0.8, 0.7, 0.7, 0.6, 0.5]
    lines = [t for t in fig.data if t.fill != "toself"]
    assert [t.name for t in lines] == ["nullspace · clean accuracy (mean of 2 seeds)", "baseline · clean accuracy"]
    assert list(lines[0].y) == pytest.approx([0.6, 0.7, 0.7])
    assert len(training_curves(runs, "epoch", ["clean_acc"]).data) == 3  # one line per run


def test_noise_triplet_images_are_the_charts_panels_at_their_own_resolution():
    """Home's picture without Plotly: the chart's three panels and titles, as uint8 pixels (the browser enlarges
    them), the noise shown at the gain its caption states."""
    rng = np.random.default_rng(0)
    original, noise = rng.random((8, 8, 3)), rng.normal(0, 0.1, (8, 8, 3))
    noised = np.clip(original + noise, 0, 1)
    panels = figures.noise_triplet_images(original, noise, noised)
    assert [p[1].split(" ×")[0] for p in panels] == ["original", "noise", "original + noise"]
    chart = figures.noise_triplet(original, noise, noised)
    assert [p[1] for p in panels] == [a.text for a in chart.layout.annotations]
    image, caption = panels[1]
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    gain = 0.5 / np.abs(noise).max()
    assert caption.startswith(f"noise ×{gain:.3g}")
    expected = np.clip(0.5 + noise * gain, 0, 1)
    assert np.array_equal(image, (expected * 255).round().astype(np.uint8))
    assert np.array_equal(panels[0][0], (original * 255).round().astype(np.uint8))
    assert np.array_equal(chart.data[1].z, image)


def test_png_bytes_is_lossless():
    import base64
    from io import BytesIO

    from PIL import Image

    image = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(BytesIO(figures.png_bytes(image)))), image)
    url = figures.png_data_url(image)
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == figures.png_bytes(image)
