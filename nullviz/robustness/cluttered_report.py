"""The figures the embedded cluttered model is recorded with (its ``config.json``) and ``nullviz info``
re-measures: held-out accuracy, attention-in-box ratios, and exact-nullspace invariance."""

from __future__ import annotations

from nullviz.data.scenes import cluttered_dataset, fixed_scenes
from nullviz.inspection.localization import localization
from nullviz.noise import exact as N

from .evaluation import accuracy


def measure(lm) -> dict:
    """What the embedded cluttered model is recorded with (its ``config.json``) and ``nullviz info``
    re-measures: held-out accuracy, the attention-in-box ratios, and the exact-nullspace invariance on the
    first held-out scene (largest |Δ logit| under nullspace noise of L2 norm 1 per patch)."""
    scenes = fixed_scenes("heldout")
    held = cluttered_dataset("heldout")
    loc = localization(lm, scenes)
    ns = N.nullspace(lm)
    x = lm.normalize(scenes.pixels[:1]).to(lm.device)
    v = N.sample_noise(ns, lm.img_size, N.NoiseSpec(magnitude=1.0, seed=0))
    report = N.verify_invariance(lm, x, v, ns)
    return {"heldout_accuracy": round(float(accuracy(lm, held)), 4),
            "heldout_images": len(held),
            "localization": {k: {m: round(val, 4) for m, val in d.items()} for k, d in loc.items()},
            "nullspace": {"nullity": ns.nullity, "noise_l2": round(report.noise_l2, 4),
                          "max_abs_logit_change": report.max_abs_logit_change,
                          "rel_logit_change": report.rel_logit_change}}
