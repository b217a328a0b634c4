"""Comparing finetuning methods over seeds: mean ± std per method, and paired differences with 95 % intervals.

Runs of different methods with the same seed share the data order, the head initialisation and the noise
seeds, so the fair comparison is *paired*: for each seed s, d_s = m(method, s) − m(control, s), and the
interval is Student's t over seeds, mean(d) ± t₀.₉₇₅,ₙ₋₁ · sd(d)/√n. An interval that excludes 0 is the
evidence the table can give; with 5 seeds it is wide, and the README says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from .errors import InvalidParameterError


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def t_quantile_975(dof: int) -> float:
    """Student's t 0.975 quantile (scipy's, which ships with scikit-image)."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def summarize(values: Sequence[float]) -> Summary:
    """Mean, sample std and the 95 % t-interval of the mean (a single value: zero width, n = 1)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        raise InvalidParameterError("values", "summarize", "at least one number", list(values))
    n = len(vals)
    mean = sum(vals) / n
    if n == 1:
        return Summary(mean, 0.0, 1, mean, mean)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return Summary(mean, std, n, mean - half, mean + half)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> Summary:
    """a − b over the seeds both have (dicts seed → value)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise InvalidParameterError("b", "paired_difference", "results for at least one seed that a also has",
                                    sorted(b))
    return summarize([a[s] - b[s] for s in seeds])


@dataclass
class MethodComparison:
    """Per-method summaries of each metric and, for one method against each other, paired differences.

    ``runs``: method → seed → metric → value."""

    runs: dict[str, dict[int, dict[str, float]]]
    metrics: list[str]
    method: str  # the one compared against the others (e.g. 'nullspace')

    def summary(self, method: str, metric: str) -> Summary:
        return summarize([r[metric] for r in self.runs[method].values() if r.get(metric) is not None])

    def difference(self, control: str, metric: str) -> Summary:
        pick = lambda m: {s: r[metric] for s, r in self.runs[m].items() if r.get(metric) is not None}  # noqa: E731
        return paired_difference(pick(self.method), pick(control))

    @property
    def controls(self) -> list[str]:
        return [m for m in self.runs if m != self.method]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "metrics": self.metrics, "runs": self.runs,
            "summary": {m: {k: self.summary(m, k).to_dict() for k in self.metrics} for m in self.runs},
            "paired": {c: {k: self.difference(c, k).to_dict() for k in self.metrics}
                       for c in self.controls if self.method in self.runs},
        }


def compare_methods(runs: Mapping[str, Mapping[int, Mapping[str, float]]], metrics: Sequence[str],
                    method: str) -> MethodComparison:
    """Validate and wrap results: every method needs at least one seed; ``method`` must be among them."""
    if method not in runs:
        raise InvalidParameterError("method", "compare_methods", f"one of {sorted(runs)}", method)
    for name, by_seed in runs.items():
        if not by_seed:
            raise InvalidParameterError("runs", "compare_methods", f"at least one seed for {name!r}", {})
    return MethodComparison({m: {int(s): dict(r) for s, r in v.items()} for m, v in runs.items()}, list(metrics),
                            method)
