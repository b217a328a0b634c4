"""Plotly figure builders: arrays and result objects in, ``go.Figure`` out (no model, no autograd, no UI).

The same builders serve the app, the command line and notebooks.
"""

from __future__ import annotations

import io
import re
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from nullviz.core.precision import FLOAT32_NEGLIGIBLE


DIVERGING = "RdBu_r"
SEQUENTIAL = "Viridis"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _rgb_uint8(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def amplify_noise(noise_hwc: np.ndarray) -> tuple[np.ndarray, float]:
    """Map a signed noise image to [0, 1] for display (0 → mid grey); return it and the gain used."""
    peak = float(np.abs(noise_hwc).max())
    gain = 0.5 / peak if peak > 0 else 1.0
    return 0.5 + np.asarray(noise_hwc) * gain, gain


LEGEND_NAME_CHARS = 48  # a horizontal legend below the plot wraps whole entries; longer names are cut
#: Where a log-scale change chart draws values that are zero to float32 precision (the charts say so).
CHANGE_FLOOR = 1e-9


def short_label(name: str, limit: int = LEGEND_NAME_CHARS) -> str:
    """A legend-sized name: paths shortened to their file name, long names cut in the middle (the full name
    stays in the hover text)."""
    import re

    text = re.sub(r"(?:[\w.~-]*/)+([\w.-]+)", r"…/\1", str(name))
    if len(text) <= limit:
        return text
    half = (limit - 1) // 2
    return text[:half] + "…" + text[-(limit - 1 - half):]


def readable(values, decimals: int = 4) -> list[float]:
    """Numbers as a person reads them: rounded, and a rounded −0.0 (a tiny negative float error) shown as 0."""
    return [float(v) + 0.0 for v in np.round(np.asarray(values, dtype=np.float64), decimals).ravel()]


def legend_safe(fig: go.Figure) -> go.Figure:
    """Legends never squeeze the plot: below it, horizontal, names shortened (full name on hover)."""
    for trace in fig.data:
        full = getattr(trace, "name", None)
        if full and short_label(full) != full:
            trace.update(name=short_label(full), legendgrouptitle=None,
                         hovertemplate=f"{full}<br>%{{x}}: %{{y}}<extra></extra>")
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0))
    fig.update_layout(margin=dict(b=max(fig.layout.margin.b or 0, 10)))
    return fig


def _square_cells(fig: go.Figure, n_subplots: int) -> go.Figure:
    """Every subplot's cells square (a patch grid is square): each y axis tied to its own x axis, and the axes'
    domains shrink to fit (``constrain="domain"``) instead of their ranges growing past the data."""
    for i in range(1, n_subplots + 1):
        suffix = "" if i == 1 else str(i)
        fig.layout[f"yaxis{suffix}"].update(scaleanchor=f"x{suffix}", constrain="domain")
        fig.layout[f"xaxis{suffix}"].update(constrain="domain")
    return fig


def _axes_off(fig: go.Figure) -> go.Figure:
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, ticks="")
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, ticks="")
    return fig


def image_row(images: Sequence[np.ndarray], titles: Sequence[str], height: int = 320) -> go.Figure:
    """Several RGB images (H×W×3 floats in [0, 1]) side by side."""
    fig = make_subplots(rows=1, cols=len(images), subplot_titles=list(titles), horizontal_spacing=0.02)
    for i, img in enumerate(images, start=1):
        fig.add_trace(go.Image(z=_rgb_uint8(img)), row=1, col=i)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10))
    return _axes_off(fig)


def _noise_triplet_panels(original: np.ndarray, noise: np.ndarray,
                          noised: np.ndarray) -> list[tuple[np.ndarray, str]]:
    """(image, caption) of original | noise (amplified, gain stated) | noised image."""
    shown, gain = amplify_noise(noise)
    peak = float(np.abs(noise).max())
    return [(original, "original"), (shown, f"noise ×{gain:.3g} (peak {peak:.3g} px)"), (noised, "original + noise")]


def noise_triplet(original: np.ndarray, noise: np.ndarray, noised: np.ndarray, height: int = 320) -> go.Figure:
    """Original | noise (amplified, gain stated) | noised image (clipped to [0, 1] for display)."""
    images, titles = zip(*_noise_triplet_panels(original, noise, noised))
    return image_row(images, titles, height)


def noise_triplet_images(original: np.ndarray, noise: np.ndarray, noised: np.ndarray) -> list[tuple[np.ndarray, str]]:
    """:func:`noise_triplet`'s panels as (RGB uint8 image at its own resolution, caption): a picture without axes
    or hover (the Home page) draws as images, without waiting for the browser to load Plotly."""
    return [(_rgb_uint8(image), caption) for image, caption in _noise_triplet_panels(original, noise, noised)]


def png_bytes(rgb_uint8: np.ndarray) -> bytes:
    """An RGB uint8 image as PNG (lossless: a JPEG would smear a noise pattern)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb_uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_url(rgb_uint8: np.ndarray) -> str:
    """An RGB uint8 image as a ``data:image/png;base64,…`` URL: it arrives with the page, no request of its own."""
    import base64

    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb_uint8)).decode("ascii")


def heatmap(values: np.ndarray, title: str = "", colorscale: str = SEQUENTIAL, zmid: float | None = None,
            colorbar_title: str = "", height: int = 320, zmin: float | None = None) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=np.asarray(values), colorscale=colorscale, zmid=zmid, zmin=zmin,
                               colorbar=dict(title=colorbar_title)))
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10))
    fig.update_yaxes(autorange="reversed", scaleanchor="x")
    return _axes_off(fig)


def patch_norm_heatmap(norms: np.ndarray, height: int = 320) -> go.Figure:
    """Per-patch L2 norm of the noise (grid of patches), on 0 … the largest norm: when every patch has the same
    norm (exact noise of one magnitude), float32 rounding must not paint a pattern — the title says it."""
    norms = np.asarray(norms, dtype=np.float64)
    hi = float(norms.max())
    spread = hi - float(norms.min())
    title = ("noise norm per patch" if spread > FLOAT32_NEGLIGIBLE * max(hi, 1e-30)
             else f"noise norm per patch: {hi:.4g} in every patch (equal to float32 precision)")
    fig = heatmap(norms, title, colorbar_title="L2 (normalised units)", height=height, zmin=0.0)
    fig.update_traces(zmax=hi or 1.0)
    return fig


def log_hline(fig: go.Figure, y: float, text: str, position: str = "top left", **line) -> None:
    """A horizontal line at ``y`` on a log y axis, its label on it. (plotly's ``add_hline`` places the label of a
    log axis at the raw value, not its log: "rtol·σ_max = 7.36e-05" sat at σ ≈ 1, "ε = 0.01" far above its line.)
    ``position``: "top|bottom left|right" — the label above or below the line, at the plot's left or right."""
    vertical, horizontal = position.split()
    fig.add_hline(y=y, **line)
    fig.add_annotation(text=text, xref="x domain", x=0.0 if horizontal == "left" else 1.0,
                       xanchor="left" if horizontal == "left" else "right", yref="y",
                       y=float(np.log10(max(y, 1e-300))), yanchor="bottom" if vertical == "top" else "top",
                       showarrow=False)


def singular_spectrum(singular_values: Sequence[float], rank: int, rtol: float, input_dim: int,
                      height: int = 320) -> go.Figure:
    """σ_i of the patch embedding on a log scale, the rank cut, and the nullity it implies."""
    s = np.asarray(singular_values, dtype=np.float64)
    idx = np.arange(1, len(s) + 1)
    floor = s[s > 0].min() * 0.1 if (s > 0).any() else 1e-30
    fig = go.Figure(go.Scatter(x=idx, y=np.maximum(s, floor), mode="lines+markers", marker=dict(size=3),
                               name="σ_i"))
    if len(s):
        # opposite corners: the threshold's label at the left, under its line (the spectrum starts high there),
        # the rank cut's at the top, left of its line; both at the top right overlapped on flat spectra
        log_hline(fig, rtol * s[0], f"rtol·σ_max = {rtol * s[0]:.2e}", "bottom left", line_dash="dot",
                  line_color="crimson")
        fig.add_vline(x=rank + 0.5, line_dash="dash", line_color="gray",
                      annotation_text=f"rank {rank}, nullity {input_dim - rank}", annotation_position="top left")
    fig.update_layout(title=f"singular values of W ({len(s)} of {input_dim} inputs)", height=height,
                      xaxis_title="index i", yaxis_title="σ_i", yaxis_type="log",
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig


#: Class names in the top-k chart are cut to this many characters (the full name is in the hover text).
TOPK_NAME_CHARS = 28


def topk_bars(probs_clean: Sequence[float], probs_noised: Sequence[float], class_names: Sequence[str],
              k: int = 5, labels: tuple[str, str] = ("clean", "noised"), height: int = 320) -> go.Figure:
    """Top-k classes (by the clean prediction, plus the noised top-1) before and after, as grouped horizontal bars:
    class names read along the bars (ImageNet's long names, drawn vertically under columns, squashed the bars
    to a strip), the most likely class on top."""
    pc, pn = np.asarray(probs_clean), np.asarray(probs_noised)
    order = list(np.argsort(-pc)[:k])
    if int(pn.argmax()) not in order:
        order.append(int(pn.argmax()))
    full = [class_names[i] if i < len(class_names) else f"class {i}" for i in order]
    names = [short_label(n, TOPK_NAME_CHARS) for n in full]

    def bar(name, values):  # every bar carries its value: a probability of 0.001 is no visible bar on 0–1
        return go.Bar(name=name, y=names, x=values, orientation="h", customdata=full,
                      text=[f"{v:.1%}" if v >= 0.001 else f"{v:.0e}" for v in values], textposition="outside",
                      cliponaxis=False, hovertemplate="%{customdata}: %{x:.2%}<extra>" + name + "</extra>")

    fig = go.Figure([bar(labels[0], pc[order]), bar(labels[1], pn[order])])
    fig.update_layout(barmode="group", title="top-k class probabilities", xaxis_title="probability",
                      yaxis_type="category", yaxis_autorange="reversed", xaxis_range=[0, 1.18],
                      xaxis_tickformat=".0%", height=max(height, 60 + 44 * len(order)),
                      margin=dict(l=10, r=10, t=40, b=10))
    return legend_safe(fig)


def synthesis_curve(steps: Sequence[int], loss: Sequence[float], mse_probs: Sequence[float],
                    agreement: Sequence[float], tol: float | None = None, height: int = 380) -> go.Figure:
    """Above: the stopping criterion (mean Σ Δp², log axis) against the tolerance ε, and top-1 agreement (0–100 %,
    right). Below: the loss L(δ) on a linear axis of its own — with λ > 0 it is negative (−λ log‖δ‖), which a
    log axis cannot draw. Every line its own colour and dash."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.68, 0.32], vertical_spacing=0.08,
                        specs=[[{"secondary_y": True}], [{}]])
    xs = list(steps)
    fig.add_trace(go.Scatter(x=xs, y=[max(v, CHANGE_FLOOR) for v in mse_probs], name="mean Σ Δp² (batch)",
                             mode="lines", line=dict(color="#1f77b4")), row=1, col=1, secondary_y=False)
    fig.add_trace(go.Scatter(x=xs, y=list(agreement), name="top-1 agreement", mode="lines",
                             line=dict(color="#2ca02c", dash="dot")), row=1, col=1, secondary_y=True)
    if tol is not None:
        fig.add_trace(go.Scatter(x=[xs[0], xs[-1]] if xs else [0, 1], y=[tol, tol], name=f"tolerance ε = {tol:g}",
                                 mode="lines", line=dict(color="crimson", dash="dash", width=1.5), hoverinfo="skip"),
                      row=1, col=1, secondary_y=False)
    fig.add_trace(go.Scatter(x=xs, y=list(loss), name="loss L(δ) = ‖Δlogits‖ − λ log‖δ‖", mode="lines",
                             line=dict(color="#7f7f7f")), row=2, col=1)
    fig.update_yaxes(type="log", title_text="Σ Δp²", exponentformat="power", row=1, col=1, secondary_y=False)
    fig.update_yaxes(range=[0, 1.02], tickvals=[0, 0.25, 0.5, 0.75, 1], tickformat=".0%", title_text="agreement",
                     row=1, col=1, secondary_y=True)
    fig.update_yaxes(title_text="loss", row=2, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_layout(title="synthesis", height=height, margin=dict(l=10, r=10, t=40, b=10))
    return legend_safe(fig)


def difference_label(dmax: float, span: float) -> str:
    """How to title a difference: in words when it is zero to float32 precision."""
    if dmax <= FLOAT32_NEGLIGIBLE * max(span, 1e-30):
        return f"difference: zero to float32 precision (max {dmax:.0e})"
    return f"difference (max {dmax:.2e}, {dmax / max(span, 1e-30):.1%} of the clean range)"


def map_triplet(clean: np.ndarray, noised: np.ndarray, title: str = "", height: int = 320,
                units: str = "attention weight") -> go.Figure:
    """Clean | noised | noised − clean maps; clean and noised share one colour scale, the difference is drawn
    on ± the clean map's range (never auto-scaled: float32 rounding must not fill the colour scale), and
    titled in words when it is zero to float32 precision."""
    clean, noised = np.asarray(clean, dtype=np.float64), np.asarray(noised, dtype=np.float64)
    diff = noised - clean
    lo, hi = float(min(clean.min(), noised.min())), float(max(clean.max(), noised.max()))
    dmax = float(np.abs(diff).max())
    span = float(clean.max() - clean.min()) or max(abs(hi), 1e-12)
    spacing = 0.1
    width = (1 - 2 * spacing) / 3
    # the verdict on its own line: on one line it ran into the "noised" title in a half-width column
    fig = make_subplots(rows=1, cols=3, subplot_titles=["clean", "noised", difference_label(dmax, span).replace(": ", ":<br>", 1)],
                        horizontal_spacing=spacing)
    fig.add_trace(go.Heatmap(z=clean, zmin=lo, zmax=hi, colorscale=SEQUENTIAL, showscale=False), row=1, col=1)
    fig.add_trace(go.Heatmap(z=noised, zmin=lo, zmax=hi, colorscale=SEQUENTIAL,
                             colorbar=dict(x=2 * width + spacing + 0.01, xanchor="left", len=0.9, thickness=12,
                                           title=dict(text=units, side="right"))),
                  row=1, col=2)
    fig.add_trace(go.Heatmap(z=diff, zmin=-span, zmax=span, colorscale=DIVERGING,
                             colorbar=dict(x=1.01, xanchor="left", len=0.9, thickness=12,
                                           title=dict(text=f"Δ {units}", side="right"))), row=1, col=3)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=80, b=10))
    return _square_cells(_axes_off(fig), 3)


def attention_grid(maps: np.ndarray, row_labels: Sequence[str] | None = None,
                   col_labels: Sequence[str] | None = None, title: str = "", cell: int = 90,
                   symmetric_range: float | None = None, units: str = "attention weight") -> go.Figure:
    """A grid of attention maps [rows, cols, gh, gw] (e.g. blocks × heads) on one colour scale with one colour
    bar (0 … the largest weight, so heads compare); or, for differences, all on ± ``symmetric_range`` (e.g.
    the clean maps' largest value) with a diverging scale, the title saying so in words when the largest
    difference is zero to float32 precision."""
    maps = np.asarray(maps)
    if symmetric_range is not None:
        title = f"{title} — {difference_label(float(np.abs(maps).max()), symmetric_range)}, on ±{symmetric_range:.2g}"
        scale = dict(zmin=-symmetric_range, zmax=symmetric_range, colorscale=DIVERGING)
        units = f"Δ {units}"
    else:
        scale = dict(zmin=0.0, zmax=float(maps.max()) or 1.0, colorscale=SEQUENTIAL)
    rows, cols = maps.shape[:2]
    row_labels = list(row_labels or [f"block {i + 1}" for i in range(rows)])  # 1-based, as the depth chart
    col_labels = list(col_labels or [f"head {j + 1}" for j in range(cols)])  # 1-based, as blocks
    titles = [f"{row_labels[i]} · {col_labels[j]}" for i in range(rows) for j in range(cols)]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=0.03 if rows > 1 else 0.1)
    for i in range(rows):
        for j in range(cols):
            first = i == 0 and j == 0
            fig.add_trace(go.Heatmap(z=maps[i, j], showscale=first, **scale,
                                     colorbar=dict(title=dict(text=units, side="right"), thickness=12)
                                     if first else None),
                          row=i + 1, col=j + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_annotations(font_size=9)
    fig.update_layout(title=title, height=max(200, rows * cell + 60), margin=dict(l=10, r=10, t=50, b=10))
    return _square_cells(_axes_off(fig), rows * cols)


def overlay(image: np.ndarray, grid_map: np.ndarray, title: str = "", opacity: float = 0.55,
            height: int = 320, units: str = "attention weight", signed: bool = False,
            marker: tuple[int, int] | None = None, pickable: bool = False) -> go.Figure:
    """A map (a patch grid, e.g. rollout, or a pixel map, e.g. an attribution) stretched over the image it
    belongs to, with a colour bar in ``units``; ``signed`` draws it on a symmetric diverging scale;
    ``marker`` outlines one cell (row, col) of the grid, e.g. the query patch; ``pickable`` adds an invisible
    point at each cell's centre (customdata (row, col)) for click selection."""
    img = _rgb_uint8(image)
    h, w = img.shape[:2]
    gm = np.asarray(grid_map, dtype=np.float64)
    gh, gw = gm.shape
    fig = go.Figure(go.Image(z=img))
    scale = dict(colorscale="Inferno")
    if signed:
        peak = float(np.abs(gm).max()) or 1e-12
        scale = dict(colorscale=DIVERGING, zmin=-peak, zmax=peak)
    fig.add_trace(go.Heatmap(z=gm, x0=w / gw / 2 - 0.5, dx=w / gw, y0=h / gh / 2 - 0.5, dy=h / gh,
                             opacity=opacity, showscale=True, **scale,
                             colorbar=dict(title=dict(text=units, side="right"), thickness=12)))
    if marker is not None:
        r, c = marker
        fig.add_shape(type="rect", x0=c * w / gw - 0.5, x1=(c + 1) * w / gw - 0.5, y0=r * h / gh - 0.5,
                      y1=(r + 1) * h / gh - 0.5, line=dict(color="cyan", width=3))
    if pickable:
        rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        fig.add_trace(go.Scatter(x=(cols.ravel() + 0.5) * w / gw - 0.5, y=(rows.ravel() + 0.5) * h / gh - 0.5,
                                 mode="markers", marker=dict(size=14, opacity=0.01), showlegend=False,
                                 customdata=np.stack([rows.ravel(), cols.ravel()], 1),
                                 hovertemplate="patch (%{customdata[0]}, %{customdata[1]}): click to query"
                                               "<extra></extra>"))
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10))
    return _axes_off(fig)


def attention_matrix(matrix: np.ndarray, num_prefix_tokens: int, title: str = "", height: int = 520,
                     query: int | None = None) -> go.Figure:
    """The full T×T attention matrix of one layer and head (rows: queries, columns: keys; rows sum to 1),
    tokens named (CLS / register r / patch (row, col) on hover), the chosen query's row outlined."""
    m = np.asarray(matrix, dtype=np.float64)
    T = m.shape[0]
    gw = int(round((T - num_prefix_tokens) ** 0.5))
    names = [("CLS" if i == 0 else f"prefix {i}") if i < num_prefix_tokens
             else f"patch ({(i - num_prefix_tokens) // gw}, {(i - num_prefix_tokens) % gw})" for i in range(T)]
    fig = go.Figure(go.Heatmap(z=m, x=list(range(T)), y=list(range(T)), colorscale=SEQUENTIAL, zmin=0.0,
                               customdata=np.array([[f"{names[i]} → {names[j]}" for j in range(T)] for i in range(T)]),
                               hovertemplate="%{customdata}: %{z:.3g}<extra></extra>",
                               colorbar=dict(title=dict(text="attention weight", side="right"), thickness=12)))
    if query is not None:
        fig.add_shape(type="rect", x0=-0.5, x1=T - 0.5, y0=query - 0.5, y1=query + 0.5,
                      line=dict(color="cyan", width=2))
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis_title="key token", yaxis_title="query token")
    # square, on exactly the tokens: with the ranges free, keeping the aspect stretched them to start at −20
    fig.update_xaxes(range=[-0.5, T - 0.5], constrain="domain")
    fig.update_yaxes(range=[T - 0.5, -0.5], scaleanchor="x", constrain="domain")
    return fig


def head_statistics_plot(stats, height: int = 360) -> go.Figure:
    """Per head, by depth: mean attention distance (pixels; the ViT paper's figure) and entropy (nats), clean
    as filled dots and noised as open circles. ``stats``: a :class:`nullviz.inspection.attention.HeadStatistics`."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["mean attention distance", "attention entropy"],
                        horizontal_spacing=0.1)
    L, H = stats.distance_clean.shape
    for col, (clean, noised, unit) in enumerate(((stats.distance_clean, stats.distance_noised, "pixels"),
                                                 (stats.entropy_clean, stats.entropy_noised, "nats")), start=1):
        for values, label, symbol, colour in ((clean, "clean", "circle", PALETTE[0]),
                                              (noised, "noised", "circle-open", PALETTE[1])):
            x = np.repeat(np.arange(1, L + 1), H)
            fig.add_trace(go.Scatter(x=x, y=values.reshape(-1), mode="markers", name=label, legendgroup=label,
                                     showlegend=col == 1,
                                     marker=dict(symbol=symbol, size=9 if label == "clean" else 13, color=colour),
                                     customdata=np.tile(np.arange(1, H + 1), L),  # heads from 1, as blocks
                                     hovertemplate=f"block %{{x}} · head %{{customdata}}: %{{y:.4g}} {unit} "
                                                   f"({label})<extra></extra>"),
                          row=1, col=col)
        fig.update_yaxes(title_text=unit, row=1, col=col)
        fig.update_xaxes(title_text="block", dtick=1, row=1, col=col)
    fig.add_hline(y=stats.max_entropy, line_dash="dot", row=1, col=2,
                  annotation_text="uniform (log T)", annotation_position="bottom right")
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10))
    return legend_safe(fig)


def change_distribution(values: np.ndarray, title: str, yaxis_title: str, height: int = 340) -> go.Figure:
    """Per block, the distribution over images of a change ([N, L]) as box plots, log scale (zeros drawn at
    the float32 floor, said in the title)."""
    v = np.asarray(values, dtype=np.float64)
    floor = CHANGE_FLOOR
    zeros = int((v <= floor).sum())
    fig = go.Figure()
    for layer in range(v.shape[1]):
        fig.add_trace(go.Box(y=np.maximum(v[:, layer], floor), name=f"{layer + 1}", boxpoints="outliers",
                             showlegend=False))
    note = f" · {zeros} values ≤ 1e-9 drawn at 1e-9" if zeros else ""
    fig.update_layout(title=f"{title} ({v.shape[0]} images){note}", xaxis_title="block", yaxis_title=yaxis_title,
                      yaxis_type="log", height=height, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def noise_contrast_plot(contrast, height: int = 380) -> go.Figure:
    """The teaching chart: per depth, how much each noise moves the token representations (left) and the
    attention (right), log scale. ``contrast``: a :class:`nullviz.inspection.attention.NoiseContrast`."""
    floor = CHANGE_FLOOR
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=["token representations ‖Δh‖/‖h‖", "attention (total variation)"])
    for k, name in enumerate(contrast.labels):
        label = f"{name} (‖·‖ {contrast.norms[k]:.3g}, {contrast.levels[k]})"
        rc = np.maximum(contrast.repr_change[k], floor)
        tv = np.maximum(contrast.attention_tv[k], floor)
        fig.add_trace(go.Scatter(x=list(range(len(rc))), y=rc, mode="lines+markers", name=label, legendgroup=name,
                                 line=dict(color=PALETTE[k % len(PALETTE)])), row=1, col=1)
        fig.add_trace(go.Scatter(x=list(range(1, len(tv) + 1)), y=tv, mode="lines+markers", name=label,
                                 legendgroup=name, showlegend=False, line=dict(color=PALETTE[k % len(PALETTE)])),
                      row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_xaxes(title_text="block (0 = patch embedding + position)", dtick=1, row=1, col=1)
    fig.update_xaxes(title_text="block", dtick=1, row=1, col=2)
    fig.update_layout(title=f"exact vs approximate vs random noise, layer by layer (values ≤ {floor:g} drawn at "
                            f"{floor:g})", height=height, margin=dict(l=10, r=10, t=60, b=10))
    return legend_safe(fig)


def depth_curve(series: Mapping[str, Sequence[float]], title: str = "change per layer", yaxis_title: str = "",
                log_y: bool = False, height: int = 320, scale: float | None = None) -> go.Figure:
    """One line per named series over the block index (where the encoder absorbs the noise).

    ``scale``: the size of the clean quantity the changes are relative to (1 for relative changes and total
    variations). On a log axis the range is then fixed from CHANGE_FLOOR to it, and changes that are all float32
    rounding are said so in the title: an auto-scaled axis drew 150n–550n of rounding as if it were structure."""
    fig = go.Figure()
    for name, values in series.items():
        floored = log_y and scale is not None  # on the fixed axis an exact 0 is drawn at its floor
        fig.add_trace(go.Scatter(x=list(range(1, len(values) + 1)), y=[max(float(v), CHANGE_FLOOR) for v in values]
                                 if floored else list(values), mode="lines+markers", name=name))
    if scale is not None:
        largest = max((abs(float(v)) for values in series.values() for v in values), default=0.0)
        if largest <= FLOAT32_NEGLIGIBLE * scale:
            title = f"{title} — float32 rounding only (at most {largest:.0e})"
        if log_y:
            fig.update_yaxes(range=[np.log10(CHANGE_FLOOR), np.log10(scale) + 0.1])
    fig.update_layout(title=title, xaxis_title="block", yaxis_title=yaxis_title, height=height,
                      yaxis_type="log" if log_y else "linear", margin=dict(l=10, r=10, t=40, b=10))
    fig.update_xaxes(dtick=1)
    return legend_safe(fig)


def bar_chart(categories: Sequence[str], series: Mapping[str, Sequence[float]], title: str = "",
              yaxis_title: str = "", height: int = 320) -> go.Figure:
    fig = go.Figure([go.Bar(name=name, x=list(categories), y=list(vals)) for name, vals in series.items()])
    fig.update_layout(barmode="group", title=title, yaxis_title=yaxis_title, height=height,
                      margin=dict(l=10, r=10, t=40, b=10))
    return legend_safe(fig)


def attribution_pair(clean: np.ndarray, noised: np.ndarray, method: str, height: int = 320) -> go.Figure:
    """Signed attribution maps for clean and noised input, on one symmetric colour scale."""
    peak = float(max(np.abs(clean).max(), np.abs(noised).max())) or 1e-12
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"{method}: clean", f"{method}: noised"],
                        horizontal_spacing=0.04)
    fig.add_trace(go.Heatmap(z=clean, zmin=-peak, zmax=peak, colorscale=DIVERGING, showscale=False), row=1, col=1)
    fig.add_trace(go.Heatmap(z=noised, zmin=-peak, zmax=peak, colorscale=DIVERGING,
                             colorbar=dict(title=dict(text="attribution to the logit", side="right"), thickness=12)),
                  row=1, col=2)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10))
    return _axes_off(fig)


def attribution_split_plot(split, height: int = 320) -> go.Figure:
    """A map beside its row-space part (what the patch embedding sees) and its nullspace part (what it cannot),
    on one symmetric scale, the nullspace share in the title. ``split``: an
    :class:`nullviz.inspection.attribution.AttributionSplit`."""
    whole = split.row + split.null
    peak = float(max(np.abs(whole).max(), np.abs(split.row).max(), np.abs(split.null).max())) or 1e-12
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.04,
                        subplot_titles=[f"{split.method}", "row-space part (the model sees it)",
                                        f"nullspace part: {split.null_fraction:.1%} of the map"])
    for k, z in enumerate((whole, split.row, split.null)):
        fig.add_trace(go.Heatmap(z=z, zmin=-peak, zmax=peak, colorscale=DIVERGING, showscale=k == 2,
                                 colorbar=dict(title=dict(text="attribution to the logit", side="right"),
                                               thickness=12)), row=1, col=k + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10))
    return _axes_off(_square_cells(fig, 3))


def linear_map_3d(nullspace_basis: np.ndarray, x: np.ndarray, v: np.ndarray, height: int = 420) -> go.Figure:
    """R³ input space of a 2×3 matrix: its nullspace (line or plane), x, and x + v."""
    fig = go.Figure()
    B = np.asarray(nullspace_basis, dtype=np.float64).reshape(3, -1)
    t = np.linspace(-2, 2, 11)
    if B.shape[1] == 1:
        pts = np.outer(t, B[:, 0])
        fig.add_trace(go.Scatter3d(x=pts[:, 0], y=pts[:, 1], z=pts[:, 2], mode="lines", name="nullspace",
                                   line=dict(width=6, color="crimson")))
    elif B.shape[1] >= 2:
        a, b = np.meshgrid(t, t)
        pts = a[..., None] * B[:, 0] + b[..., None] * B[:, 1]
        fig.add_trace(go.Surface(x=pts[..., 0], y=pts[..., 1], z=pts[..., 2], opacity=0.4, showscale=False,
                                 name="nullspace", colorscale=[[0, "crimson"], [1, "crimson"]]))
    x, xv = np.asarray(x, dtype=np.float64), np.asarray(x, dtype=np.float64) + np.asarray(v, dtype=np.float64)
    for name, p, color in (("x", x, "royalblue"), ("x + v", xv, "darkorange")):
        fig.add_trace(go.Scatter3d(x=[0, p[0]], y=[0, p[1]], z=[0, p[2]], mode="lines+markers", name=name,
                                   line=dict(width=5, color=color), marker=dict(size=[0, 6], color=color)))
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=30, b=0),
                      scene=dict(aspectmode="cube", xaxis=dict(range=[-3, 3]), yaxis=dict(range=[-3, 3]),
                                 zaxis=dict(range=[-3, 3])))
    return fig


def labelled_heatmap(values: np.ndarray, x_labels: Sequence[str], y_labels: Sequence[str], title: str = "",
                     zmin: float | None = 0.0, zmax: float | None = 1.0, colorbar_title: str = "",
                     height: int = 420) -> go.Figure:
    """A heat map with named rows and columns (e.g. accuracy by corruption × severity), values printed."""
    z = np.asarray(values, dtype=np.float64)
    fig = go.Figure(go.Heatmap(z=z, x=list(x_labels), y=list(y_labels), zmin=zmin, zmax=zmax, colorscale=SEQUENTIAL,
                               text=np.round(z, 2), texttemplate="%{text}", colorbar=dict(title=colorbar_title)))
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10))
    fig.update_yaxes(autorange="reversed")
    return fig


def tolerance_plot(curves: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]], metric: str = "accuracy",
                   height: int = 360, labels: Mapping[str, str] | None = None) -> go.Figure:
    """Accuracy (or agreement) vs. noise L2 norm, one line per (model, noise kind); ``labels``: what to call
    each kind (``nullviz.noise.kinds``), else its name."""
    labels = labels or {}
    fig = go.Figure()
    dashes = ["solid", "dash", "dot", "dashdot"]
    for m_i, (model, kinds) in enumerate(curves.items()):
        for kind, c in kinds.items():
            fig.add_trace(go.Scatter(x=list(c["magnitude"]), y=list(c[metric]), mode="lines+markers",
                                     name=f"{labels.get(kind, kind)} · {model}",
                                     line=dict(dash=dashes[m_i % len(dashes)])))
    fig.update_layout(title=f"noise tolerance: {metric} vs. noise size", xaxis_title="‖noise‖₂ (normalised units)",
                      yaxis_title=metric, yaxis_range=[0, 1.02], height=height, margin=dict(l=10, r=10, t=40, b=10))
    return legend_safe(fig)


#: Words for the metrics a finetuning run logs (legends say these, never the keys).
METRIC_WORDS = {"clean_acc": "clean accuracy", "fgsm_acc": "FGSM accuracy", "delta_acc": "accuracy under fresh δs",
                "train_delta_acc": "accuracy under its training δ", "gaussian_acc": "accuracy under Gaussian noise",
                "start_delta_acc": "accuracy under the start's δ", "nullspace_size": "nullspace size",
                "loss": "loss", "clean_loss": "clean loss", "noised_loss": "noised loss"}


def metric_words(key: str) -> str:
    return METRIC_WORDS.get(key, key.replace("_acc", " accuracy").replace("_", " "))


def smooth(values: Sequence[float | None], weight: float) -> list[float | None]:
    """TensorBoard's smoothing: an exponential moving average, debiased so the first points are not pulled to
    0; ``weight`` 0 leaves the values as they are. Missing values stay missing and do not break the average."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out: list[float | None] = []
    last, count = 0.0, 0
    for v in values:
        if v is None or v != v:  # None or NaN
            out.append(None)
            continue
        count += 1
        last = weight * last + (1 - weight) * float(v)
        out.append(last / (1 - weight ** count) if weight > 0 else float(v))
    return out


def seed_groups(runs: Sequence[str]) -> dict[str, list[str]]:
    """Runs grouped by what they ran: ``nullspace-seed0``, ``nullspace-seed1`` → ``nullspace`` (the names a
    finetuning job gives a method it runs with several seeds); any other name is a group of its own."""
    groups: dict[str, list[str]] = {}
    for run in runs:
        m = re.fullmatch(r"(.+)-seed\d+", run)
        groups.setdefault(m.group(1) if m else run, []).append(run)
    return groups


def seed_spread(histories: Sequence[Mapping[str, Sequence[float]]], x_key: str, key: str
                ) -> tuple[list, list[float], list[float], list[float], list[int]]:
    """Over several runs of one method: at each x that any run reached, the mean, lowest and highest value of
    ``key`` and how many runs it is over (a run that has not reached x yet, or lacks the value, is left out)."""
    by_x: dict = {}
    for hist in histories:
        for x, y in zip(hist.get(x_key, []), hist.get(key, [])):
            if y is not None and y == y:
                by_x.setdefault(x, []).append(float(y))
    xs = sorted(by_x)
    return (xs, [float(np.mean(by_x[x])) for x in xs], [min(by_x[x]) for x in xs], [max(by_x[x]) for x in xs],
            [len(by_x[x]) for x in xs])


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def training_curves(histories: Mapping[str, Mapping[str, Sequence[float]]], x_key: str, y_keys: Sequence[str],
                    title: str = "", yaxis_title: str = "", height: int = 340, smoothing: float = 0.0,
                    log_y: bool = False, best: str | None = None, bands: bool = False) -> go.Figure:
    """Several runs on the same axes: for each run and each metric in ``y_keys``, one line over ``x_key``,
    named in words ("baseline · clean accuracy"). Epochs are whole numbers on the axis; with three or fewer
    points each is labelled with its value, and accuracies sit on 0–1 (a single epoch is a labelled point,
    not a dot on an axis of 0–2). ``smoothing`` (TensorBoard's, :func:`smooth`) draws the smoothed line over the
    raw one, faint; ``log_y`` a log axis; ``best`` ("max" or "min") stars each line's best raw value. ``bands``:
    the seeds of one method (:func:`seed_groups`) become one line, their mean, over a band from their lowest to
    their highest value (:func:`seed_spread`)."""
    fig = go.Figure()
    dashes = ["solid", "dash", "dot", "dashdot", "longdash"]
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    groups = seed_groups(list(histories)) if bands else {run: [run] for run in histories}
    most = 0
    line_no = 0
    for r_i, (group, members) in enumerate(groups.items()):
        for key in y_keys:
            hists = [histories[m] for m in members if key in histories[m] and len(histories[m][key])]
            if not hists:
                continue
            if len(members) > 1:
                xs, ys, lo, hi, counts = seed_spread(hists, x_key, key)
                if not xs:
                    continue
                name = f"{group} · {metric_words(key)} (mean of {len(hists)} seeds)"
            else:
                xs, ys, lo, hi, counts = list(hists[0][x_key]), list(hists[0][key]), None, None, None
                name = f"{group} · {metric_words(key)}"
            most = max(most, len(xs))
            few = len(xs) <= 3
            color = palette[line_no % len(palette)]
            line_no += 1
            smoothed = smoothing > 0 and not few
            dash = dashes[r_i % len(dashes)]
            if lo is not None:
                band_lo, band_hi = (smooth(lo, smoothing), smooth(hi, smoothing)) if smoothed else (lo, hi)
                fig.add_trace(go.Scatter(x=list(xs) + list(xs)[::-1], y=list(band_hi) + list(band_lo)[::-1],
                                         fill="toself", fillcolor=_rgba(color, 0.18), line=dict(width=0),
                                         mode="lines", legendgroup=name, showlegend=False, hoverinfo="skip",
                                         name=f"{name}: lowest–highest seed"))
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines+markers+text" if few else "lines+markers",
                text=[f"{v:.1%}" if key.endswith("_acc") and v is not None else
                      (f"{v:.3g}" if v is not None else "") for v in ys] if few else None,
                customdata=counts, textposition="top center", marker=dict(size=9 if few else 6, color=color),
                name=name + (" (raw)" if smoothed else ""), legendgroup=name, showlegend=not smoothed,
                opacity=0.3 if smoothed else 1.0, line=dict(dash=dash, color=color)))
            if smoothed:
                fig.add_trace(go.Scatter(x=xs, y=smooth(ys, smoothing), mode="lines", name=name,
                                         legendgroup=name, line=dict(dash=dash, color=color)))
            valid = [(x, y) for x, y in zip(xs, ys) if y is not None and y == y]
            if best in ("max", "min") and valid:
                bx, by = (max if best == "max" else min)(valid, key=lambda p: p[1])
                fig.add_trace(go.Scatter(x=[bx], y=[by], mode="markers", legendgroup=name, showlegend=False,
                                         marker=dict(symbol="star", size=14, color=color),
                                         hovertemplate=f"best of {name}: %{{y:.4g}} at {x_key} %{{x}}"
                                                       "<extra></extra>"))
    fig.update_layout(title=title, xaxis_title=x_key, yaxis_title=yaxis_title, height=height,
                      margin=dict(l=10, r=10, t=40, b=10))
    if x_key == "epoch":
        fig.update_xaxes(dtick=1, tick0=1, range=[0.5, max(most, 1) + 0.5])
    if log_y:
        fig.update_yaxes(type="log")
    elif all(k.endswith("_acc") for k in y_keys):
        fig.update_yaxes(range=[0, 1.08], tickformat=".0%")
    return legend_safe(fig)


def frontier_plot(frontier, height: int = 420) -> go.Figure:
    """‖δ‖ vs held-out mean Σ Δp² (log scale) for each synthesized δ of a sweep, with the three controls of
    the same norm on the same images, the tolerance ε as a line, and the largest δ it allows starred.
    ``frontier``: a :class:`nullviz.noise.approximate.Frontier`."""
    pts = sorted(frontier.points, key=lambda p: p.noise_l2)
    x = [p.noise_l2 for p in pts]
    floor = 1e-7  # Σ Δp² can be 0.0 to float precision; draw it at the floor of the log axis
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[max(p.check_mse_probs, floor) for p in pts], mode="lines+markers",
                             name="optimised δ", text=[p.label for p in pts],
                             hovertemplate="%{text}<br>‖δ‖ %{x:.3g}<br>Σ Δp² %{y:.2e}<extra></extra>"))
    for key, name, symbol in (("random_start_mse_probs", "random start, same norm", "circle-open"),
                              ("permuted_mse_probs", "δ permuted", "x"),
                              ("gaussian_mse_probs", "Gaussian, same norm", "diamond-open")):
        fig.add_trace(go.Scatter(x=x, y=[max(getattr(p, key), floor) for p in pts], mode="markers", name=name,
                                 marker=dict(symbol=symbol, size=9)))
    log_hline(fig, frontier.tol, f"ε = {frontier.tol:g}", "bottom right", line_dash="dash")
    best = frontier.allowed()
    if best is not None:
        fig.add_trace(go.Scatter(x=[best.noise_l2], y=[max(best.check_mse_probs, floor)], mode="markers",
                                 name=f"largest δ within ε: {best.label}",
                                 marker=dict(symbol="star", size=18, color="gold", line=dict(width=1))))
    fig.update_layout(title=f"the frontier: size vs visibility on {frontier.num_check_images} images δ never saw",
                      xaxis_title="‖δ‖₂", yaxis_title="held-out mean Σ Δp²", yaxis_type="log", height=height,
                      margin=dict(l=10, r=10, t=50, b=10), legend=dict(orientation="h", y=-0.25))
    return fig


def _interval_bars(name: str, summaries, metrics: Sequence[str], labels: Mapping[str, str],
                   scale: Mapping[str, float], hover: bool = False) -> go.Bar:
    """One bar per metric at a :class:`~nullviz.train.comparison.Summary`'s mean, its 95 % interval as error bars."""
    k = [scale.get(m, 1.0) for m in metrics]  # a negative scale flips a measure (lower is better → up is better)
    bar = dict(name=name, x=[labels.get(m, m) for m in metrics], y=[s.mean * f for s, f in zip(summaries, k)],
               error_y=dict(type="data", symmetric=False,  # n < 2: no interval, so no error bar at all
                            array=[max(s.ci_high * f, s.ci_low * f) - s.mean * f if s.has_interval else 0
                                   for s, f in zip(summaries, k)],
                            arrayminus=[s.mean * f - min(s.ci_high * f, s.ci_low * f) if s.has_interval else 0
                                        for s, f in zip(summaries, k)]))
    if hover:
        bar.update(hoverinfo="text", hovertext=[
            f"{name}: {s.mean * f:.3g} (95 % CI {s.ci_low * f:.3g} … {s.ci_high * f:.3g}, n = {s.n})"
            if s.has_interval else f"{name}: {s.mean * f:.3g} (n = {s.n}: no interval)" for s, f in zip(summaries, k)])
    return go.Bar(**bar)


def method_bars(comparison, metrics: Sequence[str] | None = None, labels: Mapping[str, str] | None = None,
                scale: Mapping[str, float] | None = None, height: int = 420) -> go.Figure:
    """Grouped bars: one group per metric, one bar per method at its mean over seeds, with the 95 % t-interval
    of the mean as error bars (none for a single seed). ``comparison``: a
    :class:`nullviz.train.comparison.MethodComparison`; ``scale`` multiplies a metric (e.g. 100 for %)."""
    metrics = list(metrics or comparison.metrics)
    labels, scale = dict(labels or {}), dict(scale or {})
    fig = go.Figure()
    for method in comparison.runs:
        fig.add_trace(_interval_bars(method, [comparison.summary(method, m) for m in metrics], metrics, labels, scale,
                                     hover=True))
    n = max(len(v) for v in comparison.runs.values())
    fig.update_layout(barmode="group", height=height, margin=dict(l=10, r=10, t=50, b=10),
                      title=f"mean over {n} seed{'s' if n != 1 else ''}" + (", 95 % intervals" if n > 1 else ""),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def paired_difference_bars(comparison, metrics: Sequence[str] | None = None,
                           labels: Mapping[str, str] | None = None, scale: Mapping[str, float] | None = None,
                           height: int = 420, lower_is_better: Sequence[str] = ()) -> go.Figure:
    """``comparison.method`` minus each control, paired by seed: bars at the mean difference with 95 %
    intervals; a bar whose interval crosses 0 is no evidence either way. Up is better for every measure: a
    ``lower_is_better`` one (an error) is drawn as control minus method, and its label says so. A list of
    comparisons (one per variant) draws every variant against its controls in one figure."""
    comparisons = list(comparison) if isinstance(comparison, (list, tuple)) else [comparison]
    metrics = list(metrics or comparisons[0].metrics)
    labels, scale = dict(labels or {}), dict(scale or {})
    for m in lower_is_better:
        if m in metrics:
            scale[m] = -scale.get(m, 1.0)
            labels[m] = f"{labels.get(m, m)} (reduction)"
    fig = go.Figure()
    for cmp in comparisons:
        for control in cmp.controls:
            fig.add_trace(_interval_bars(f"{cmp.method} − {control}",
                                         [cmp.difference(control, m) for m in metrics], metrics, labels, scale))
    who = comparisons[0].method if len(comparisons) == 1 else ", ".join(c.method for c in comparisons)
    fig.add_hline(y=0, line_width=1)
    fig.update_layout(barmode="group", height=height, margin=dict(l=10, r=10, t=50, b=10),
                      title=f"{who} against each control, paired by seed (95 % intervals; up "
                            f"is better for every measure)",
                      legend=dict(orientation="h", y=-0.2))
    return fig


def faithfulness_curves(report, labels: Mapping[str, str] | None = None, height: int = 380) -> go.Figure:
    """Deletion (left) and insertion (right) curves, one line per method, the random ranking dashed.
    ``report``: a :class:`nullviz.inspection.faithfulness.FaithfulnessReport`."""
    labels = labels or {}
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=["deletion: most important patches removed first (lower is faithful)",
                                        "insertion: most important patches put back first (higher is faithful)"])
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    summary = report.summary()
    for i, method in enumerate(report.deletion):
        random = method == "random"
        name = f"{labels.get(method, method)} (AUC {summary[method]['deletion_auc']:.2f} / " \
               f"{summary[method]['insertion_auc']:.2f})"
        style = dict(color="#7f7f7f" if random else palette[i % len(palette)], dash="dash" if random else "solid")
        for col, curve in ((1, report.deletion[method]), (2, report.insertion[method])):
            fig.add_trace(go.Scatter(x=report.fractions, y=curve, mode="lines", name=name, legendgroup=method,
                                     showlegend=col == 1, line=style), row=1, col=col)
    fig.update_xaxes(title_text="fraction of patches", range=[0, 1])
    fig.update_yaxes(title_text="probability of the explained class", range=[0, 1.02], col=1)
    fig.update_yaxes(range=[0, 1.02], col=2)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10),
                      title_text=f"faithfulness over {report.images} image(s)")
    fig.update_annotations(font_size=11)
    return legend_safe(fig)


def head_embedding_plot(embedding, labels: Mapping[str, str] | None = None, height: int = 460) -> go.Figure:
    """Queries (circles) and keys (crosses) of one head over many images, one colour per noise, in one 2-D
    embedding; hover names the image and the patch, and each point carries (image from 1, row, column) as its
    ``customdata`` so a selection can show the patches (:func:`patch_gallery`). ``embedding``: a
    :class:`nullviz.inspection.attention.HeadEmbedding`."""
    labels = labels or {}
    palette = ["#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b"]
    fig = go.Figure()
    custom = np.concatenate([np.asarray(embedding.image)[:, None] + 1, np.asarray(embedding.patch)], 1)
    for k, cond in enumerate(embedding.conditions):
        pts = embedding.coords[cond]
        for j, (kind, symbol) in enumerate((("queries", "circle"), ("keys", "x"))):
            fig.add_trace(go.Scattergl(x=pts[j][:, 0], y=pts[j][:, 1], mode="markers", customdata=custom,
                                       name=f"{labels.get(cond, cond)} · {kind}",
                                       hovertemplate="image %{customdata[0]} · patch (%{customdata[1]}, "
                                                     "%{customdata[2]})<extra>" + f"{labels.get(cond, cond)} · {kind}"
                                                     "</extra>",
                                       marker=dict(symbol=symbol, size=5, opacity=0.6,
                                                   color=palette[k % len(palette)])))
    axes = "PC" if embedding.method == "pca" else "t-SNE "
    kept = f" · the 2 axes keep {embedding.explained:.0%} of the clean variance" if embedding.explained else ""
    fig.update_layout(title=f"block {embedding.block}, head {embedding.head}: queries and keys{kept}",
                      xaxis_title=f"{axes}1", yaxis_title=f"{axes}2", height=height, margin=dict(l=10, r=10, t=40, b=10),
                      dragmode="lasso")
    fig.update_yaxes(scaleanchor="x")
    return legend_safe(fig)


def patch_gallery(images: np.ndarray, picks: Sequence[tuple[int, int, int]], patch_size: int,
                  captions: Sequence[str] | None = None, columns: int = 6, height_per_row: int = 150) -> go.Figure:
    """The image patches behind selected tokens: ``images`` [B, H, W, 3] (display pixels), ``picks`` (image,
    row, column) per token, each patch drawn enlarged with its caption (default "image i · (r, c)")."""
    picks = list(picks)
    if not picks:
        raise ValueError("patch_gallery needs at least one (image, row, column) to show")
    imgs = np.asarray(images)
    p = int(patch_size)
    captions = list(captions) if captions is not None else [f"image {i} · ({r}, {c})" for i, r, c in picks]
    cols = min(columns, len(picks))
    rows = -(-len(picks) // cols)
    height = height_per_row * rows + 60
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=captions, horizontal_spacing=0.02,
                        vertical_spacing=min(0.3, 60 / height) if rows > 1 else 0.0)  # room for two-line titles
    for k, (i, r, c) in enumerate(picks):
        if not (0 <= i < len(imgs)) or not (0 <= r * p < imgs.shape[1]) or not (0 <= c * p < imgs.shape[2]):
            raise ValueError(f"patch_gallery: ({i}, {r}, {c}) is not a patch of the {len(imgs)} images of "
                             f"{imgs.shape[1]}×{imgs.shape[2]} px")
        fig.add_trace(go.Image(z=_rgb_uint8(imgs[i, r * p:(r + 1) * p, c * p:(c + 1) * p]),
                               hovertemplate=captions[k] + "<extra></extra>"), row=k // cols + 1, col=k % cols + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, scaleanchor="x")
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=50, b=10))
    fig.update_annotations(font_size=11)
    return fig


def sanity_bars(results: Sequence[Mapping], tolerance: float, labels: Mapping[str, str] | None = None,
                height: int = 360) -> go.Figure:
    """The nullspace sanity check of several methods: how much each map moved under exact nullspace noise, per
    patch and per pixel, relative to its largest value, on a log axis with the pass line. ``results``: the
    ``to_dict()`` of :class:`nullviz.inspection.attribution.NullspaceSanity` objects."""
    labels = labels or {}
    names = [labels.get(r["method"], r["method"]) for r in results]
    floor = 1e-9  # a change of exactly 0 drawn at the floor of the log axis
    fig = go.Figure()
    for key, words, color in (("patch_change", "per patch (what the ViT reads)", "#1f77b4"),
                              ("map_change", "per pixel", "#ff7f0e")):
        fig.add_trace(go.Bar(x=names, y=[max(r[key], floor) for r in results], name=words, marker_color=color,
                             hovertemplate="%{x}: %{y:.2e}<extra>" + words + "</extra>"))
    log_hline(fig, tolerance, f"pass below {tolerance:g} (float32 rounding)", "top left", line_dash="dash",
              line_color="#444")
    fig.update_layout(barmode="group", title="how far each map moves under exact nullspace noise (same output)",
                      yaxis_title="change ÷ the map's largest value", yaxis_type="log", height=height,
                      margin=dict(l=10, r=10, t=40, b=10))
    return legend_safe(fig)
