"""When a difference is float32 rounding rather than an effect: one threshold for every figure and sentence."""

from __future__ import annotations

#: A change at most this fraction of the clean quantity is float32 rounding (a few ulps, grown through a ViT's
#: blocks; one ulp is 1.2e-7), not a change. Figures draw it in words; sentences say "to float32 rounding".
FLOAT32_NEGLIGIBLE = 1e-5


def is_rounding(change: float, scale: float = 1.0) -> bool:
    """Is ``change`` (absolute, of a quantity of size ``scale``) float32 rounding?"""
    return abs(change) <= FLOAT32_NEGLIGIBLE * max(abs(scale), 1e-30)
