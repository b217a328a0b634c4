"""Comparing finetuning methods over seeds: mean ± std per method, and paired differences with 95 % intervals.

Runs of different methods with the same seed share the data order, the head initialisation and the noise
seeds, so the fair comparison is *paired*: for each seed s, d_s = m(method, s) − m(control, s), and the
interval is Student's t over seeds, mean(d) ± t₀.₉₇₅,ₙ₋₁ · sd(d)/√n. An interval that excludes 0 is the
evidence the table can give; with 5 seeds it is wide, and the README says so.

What the statistics claim and no more: with fewer than 2 values there is no interval (and no p-value) at
all, not a zero-width one; every summary carries n and how many values were missing; a comparison declares
its **primary** measures before the run, and the p-values of the other (secondary) measures are Holm-adjusted
over every control × secondary measure, so many looks do not pass for many findings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from nullviz.core.errors import InvalidParameterError


@dataclass(frozen=True)
class Summary:
    """Mean of n values with the 95 % t-interval and the two-sided one-sample t-test against 0 (None, both,
    when n < 2: one value says nothing about its spread). ``n_missing``: values that were None or NaN."""

    mean: float
    std: float
    n: int
    ci_low: float | None
    ci_high: float | None
    p_value: float | None = None
    n_missing: int = 0

    @property
    def has_interval(self) -> bool:
        return self.ci_low is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def t_quantile_975(dof: int) -> float:
    """Student's t 0.975 quantile (scipy's, which ships with scikit-image)."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def summarize(values: Sequence[float]) -> Summary:
    """Mean, sample std, the 95 % t-interval of the mean and the t-test of mean 0 (no interval and no
    p-value for a single value); None and NaN are counted as missing, never silently dropped."""
    values = list(values)
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    missing = len(values) - len(vals)
    if not vals:
        raise InvalidParameterError("values", "summarize", "at least one number", values)
    n = len(vals)
    mean = sum(vals) / n
    if n == 1:
        return Summary(mean, 0.0, 1, None, None, None, missing)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    if std == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        from scipy.stats import t

        p = float(2 * t.sf(abs(mean / (std / math.sqrt(n))), n - 1))
    return Summary(mean, std, n, mean - half, mean + half, p, missing)


def holm(p_values: Mapping[Any, float | None]) -> dict[Any, float | None]:
    """Holm's step-down adjustment of a family of p-values (None stays None, outside the family): the k-th
    smallest of m is multiplied by m − k + 1, kept monotone and capped at 1."""
    family = sorted(((p, key) for key, p in p_values.items() if p is not None), key=lambda t: t[0])
    m = len(family)
    out: dict[Any, float | None] = {key: None for key, p in p_values.items() if p is None}
    running = 0.0
    for k, (p, key) in enumerate(family):
        running = max(running, min(1.0, (m - k) * p))
        out[key] = running
    return out


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> Summary:
    """a − b over the seeds both have (dicts seed → value)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise InvalidParameterError("b", "paired_difference", "results for at least one seed that a also has",
                                    sorted(b))
    return summarize([a[s] - b[s] for s in seeds])


def paired_bootstrap(variant: Mapping[int, Sequence[float]], control: Mapping[int, Sequence[float]],
                     denominator: Sequence[float] | None = None, scale: float = 1.0, resamples: int = 2000,
                     seed: int = 0) -> Summary:
    """The uncertainty the test images themselves add, which an interval over seeds leaves out: a paired
    bootstrap over test images of variant − control, each the mean over the seeds both have.

    ``variant`` / ``control``: seed → per-image values on the same test images in the same order (1/0 for
    right/wrong: the statistic is the accuracy, ×``scale``). With ``denominator`` (the reference model's
    per-image error counts) the statistic is the pooled ratio ``scale``·Σ v / Σ denominator (the pooled
    corruption error). Every resample draws the images with replacement, the same draw for both models and
    every seed. Returns the full-set difference as ``mean``, the bootstrap std, the 2.5–97.5 % percentile
    interval and a two-sided bootstrap p-value (2·the share of resamples on the far side of 0); ``n`` is the
    number of test images."""
    import numpy as np

    seeds = sorted(set(variant) & set(control))
    if not seeds:
        raise InvalidParameterError("control", "paired_bootstrap", "per-image values for a seed variant also has",
                                    sorted(control))
    v = np.asarray([np.asarray(variant[s], dtype=np.float64) for s in seeds])
    c = np.asarray([np.asarray(control[s], dtype=np.float64) for s in seeds])
    if v.shape != c.shape or v.ndim != 2 or v.shape[1] == 0:
        raise InvalidParameterError("control", "paired_bootstrap", f"per-image values of the variant's shape {v.shape}",
                                    c.shape)
    n = v.shape[1]
    d = np.ones(n) if denominator is None else np.asarray(denominator, dtype=np.float64)
    if d.shape != (n,):
        raise InvalidParameterError("denominator", "paired_bootstrap", f"{n} per-image values", d.shape)

    def statistic(idx):  # idx [B, n] → [B]
        dsum = d[idx].sum(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return scale * ((v[:, idx].sum(-1) - c[:, idx].sum(-1)) / dsum).mean(0)

    full = float(statistic(np.arange(n)[None])[0])
    draws = statistic(np.random.default_rng(seed).integers(0, n, size=(resamples, n)))
    draws = draws[np.isfinite(draws)]
    if len(draws) < 2:
        return Summary(full, 0.0, n, None, None, None)
    low, high = np.percentile(draws, [2.5, 97.5])
    p = float(min(1.0, 2 * min((draws <= 0).mean(), (draws >= 0).mean())))
    return Summary(full, float(draws.std(ddof=1)), n, float(low), float(high), p)


@dataclass
class MethodComparison:
    """Per-method summaries of each metric and, for one method against each other, paired differences.

    ``runs``: method → seed → metric → value."""

    runs: dict[str, dict[int, dict[str, float]]]
    metrics: list[str]
    method: str  # the one compared against the others (e.g. 'nullspace')
    primary: tuple[str, ...] = ()  # declared before the run; the rest are secondary and Holm-adjusted

    def summary(self, method: str, metric: str) -> Summary:
        return summarize([r[metric] for r in self.runs[method].values() if r.get(metric) is not None])

    def difference(self, control: str, metric: str) -> Summary:
        pick = lambda m: {s: r[metric] for s, r in self.runs[m].items() if r.get(metric) is not None}  # noqa: E731
        return paired_difference(pick(self.method), pick(control))

    @property
    def controls(self) -> list[str]:
        return [m for m in self.runs if m != self.method]

    @property
    def secondary(self) -> list[str]:
        return [m for m in self.metrics if m not in self.primary]

    def adjusted_p(self) -> dict[tuple[str, str], float | None]:
        """(control, metric) → the paired difference's p-value: as it is for a primary measure, Holm-adjusted
        over every control × secondary measure otherwise."""
        raw = {(c, m): self.difference(c, m).p_value for c in self.controls for m in self.metrics}
        adjusted = holm({key: p for key, p in raw.items() if key[1] not in self.primary})
        return {key: raw[key] if key[1] in self.primary else adjusted[key] for key in raw}

    def to_dict(self) -> dict[str, Any]:
        adjusted = self.adjusted_p() if self.method in self.runs else {}
        return {
            "method": self.method, "metrics": self.metrics, "runs": self.runs,
            "primary": list(self.primary), "secondary": self.secondary,
            "correction": "Holm over every control × secondary measure; primary measures unadjusted",
            "summary": {m: {k: self.summary(m, k).to_dict() for k in self.metrics} for m in self.runs},
            "paired": {c: {k: {**self.difference(c, k).to_dict(), "p_adjusted": adjusted.get((c, k))}
                           for k in self.metrics}
                       for c in self.controls if self.method in self.runs},
        }


def compare_methods(runs: Mapping[str, Mapping[int, Mapping[str, float]]], metrics: Sequence[str],
                    method: str, primary: Sequence[str] = ()) -> MethodComparison:
    """Validate and wrap results: every method needs at least one seed; ``method`` must be among them;
    ``primary`` (declared before the run) among the metrics."""
    if method not in runs:
        raise InvalidParameterError("method", "compare_methods", f"one of {sorted(runs)}", method)
    for name in primary:
        if name not in metrics:
            raise InvalidParameterError("primary", "compare_methods", f"metrics among {list(metrics)}", name)
    for name, by_seed in runs.items():
        if not by_seed:
            raise InvalidParameterError("runs", "compare_methods", f"at least one seed for {name!r}", {})
    return MethodComparison({m: {int(s): dict(r) for s, r in v.items()} for m, v in runs.items()}, list(metrics),
                            method, tuple(primary))
