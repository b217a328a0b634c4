"""Nullspace: exact, feasible-exact and optimised (approximate) noise for one image, with the proof."""

import io
import json

import streamlit as st
import torch

from app_state import current_model, figure_html, image_picker, png_bytes, require_shell, show_error
from nullviz import figures
from nullviz import nullspace as N
from nullviz.data import SYNTHESIS_SOURCES, synthesis_images
from nullviz.errors import NullvizError
from nullviz.synthesis import SynthesisConfig, clipped_delta, noise_effect, synthesize

require_shell(__file__)

NOTE = dict(delta_color="off", delta_arrow="off")  # a metric's grey side note, not a change
MODES = ("Exact", "Exact, valid image (feasible)", "Approximate — encoder level", "Approximate — input level")

lm = current_model()
st.title("Nullspace noise")
chosen = image_picker("ns")
x = lm.preprocess(chosen.image)
st.session_state["current_image"] = chosen

mode = st.radio("Noise", MODES, horizontal=True, key="ns_mode")
exact = mode in MODES[:2]

with st.form("ns_form"):
    if exact:
        c = st.columns(5)
        spec_rtol = c[0].number_input("rank rtol", min_value=0.0, max_value=0.999, value=None, format="%.2e",
                                      placeholder="default (float32)", key="ns_rtol",
                                      help="Singular values below rtol·σ_max count as zero.")
        magnitude = c[1].number_input("magnitude (normalised units)", min_value=0.0, value=1.0, step=0.5,
                                      key="ns_magnitude")
        norm = c[2].selectbox("norm", ["l2_patch", "linf"], key="ns_norm",
                              help="l2_patch: every patch's noise has this L2 norm; linf: the largest entry.")
        shared = c[3].checkbox("one pattern for all patches", key="ns_shared")
        seed = c[4].number_input("seed", min_value=0, value=0, step=1, key="ns_seed")
    else:
        c = st.columns(4)
        lim = c[0].number_input("start size lim", min_value=0.01, value=3.0, key="ns_lim")
        lr = c[1].number_input("learning rate", min_value=1e-4, value=0.1, format="%.4f", key="ns_lr")
        lam = c[2].number_input("λ (keeps δ large)", min_value=0.0, value=0.0, format="%.3f", key="ns_lam")
        tol = c[3].number_input("tolerance ε (mean Σ Δp²)", min_value=1e-5, value=0.01, format="%.4f", key="ns_tol")
        c = st.columns(4)
        steps = c[0].number_input("max steps", min_value=1, max_value=5000, value=200, key="ns_steps")
        source = c[1].selectbox("optimise on", SYNTHESIS_SOURCES, key="ns_source",
                                index=0 if lm.img_size[0] <= 64 else 1)
        n_images = c[2].number_input("images", min_value=1, max_value=1024, value=64, key="ns_images")
        seed = c[3].number_input("seed", min_value=0, value=0, step=1, key="ns_seed_approx")
        clip = mode == MODES[3] and st.checkbox(
            "keep x + δ a valid image (optimise for clip(x + δ) to [0, 1])", key="ns_clip",
            help="Without this, most of x + δ lies outside [0, 1]: not an image a camera or a file can hold.")
    go = st.form_submit_button("Make noise", type="primary")

if go:
    try:
        if exact:
            ns = N.nullspace(lm, spec_rtol)
            v = N.sample_noise(ns, lm.img_size, N.NoiseSpec(magnitude=float(magnitude), norm=norm, shared=shared,
                                                           seed=int(seed), weakest=0 if ns.nullity else 8))
            extra = {}
            if mode == MODES[1] and ns.nullity > 0:
                feas = N.feasible_noise(lm, ns, x, v)
                v = feas.noise
                extra = {"feasible_kept_norm_fraction": feas.kept_norm_fraction,
                         "feasible_max_box_violation": feas.max_box_violation}
            st.session_state["current_noise"] = {"kind": "exact", "level": "input", "delta": v, "rtol": ns.rtol,
                                                 "model": lm.name, "extra": extra, "image": chosen.name}
        else:
            level = "encoder" if mode == MODES[2] else "input"
            cfg = SynthesisConfig(level=level, lim=float(lim), lr=float(lr), lam=float(lam), tol=float(tol),
                                  steps=int(steps), seed=int(seed), clip=bool(clip))
            images = lm.preprocess(synthesis_images(source, int(n_images), chosen.image))
            bar = st.progress(0.0, text="synthesizing δ…")
            chart = st.empty()
            hist = {"step": [], "loss": [], "mse": [], "agree": []}

            def on_step(s):
                for k, val in zip(hist, (s.step, s.loss, s.mse_probs, s.agreement)):
                    hist[k].append(val)
                bar.progress((s.step + 1) / cfg.steps, text=f"step {s.step + 1}/{cfg.steps} · loss {s.loss:.4f} · "
                             f"Σ Δp² {s.mse_probs:.4f} · agreement {s.agreement:.0%}")
                if s.step % 10 == 0:
                    chart.plotly_chart(figures.synthesis_curve(hist["step"], hist["loss"], hist["mse"],
                                                               hist["agree"], cfg.tol), key=f"live_{s.step}")

            result = synthesize(lm, images, cfg, callback=on_step)
            bar.progress(1.0, text=f"done: {result.steps_run} steps in {result.seconds:.1f}s"
                         + (" (reached ε)" if result.reached_tolerance else ""))
            chart.empty()
            st.session_state["current_noise"] = {"kind": "approximate", "level": level, "delta": result.delta,
                                                 "model": lm.name, "result": result, "image": chosen.name}
    except NullvizError as exc:
        show_error(exc)

noise = st.session_state.get("current_noise")
if noise is not None and noise["model"] != lm.name:
    st.info("The noise in memory was made for another model; make new noise for this one.")
    noise = None
if noise is None:
    st.info("Choose a kind of noise and press **Make noise**.")
    st.stop()

delta, level = noise["delta"], noise["level"]
metrics: dict = {"model": lm.name, "image": chosen.name, "kind": noise["kind"], "level": level}
res = noise.get("result")
clipped = res is not None and res.config.clip
if clipped:  # the model sees clip(x + δ): show and verify exactly that
    delta = clipped_delta(lm, x, delta)[0].cpu()
if level == "input" and res is not None:
    if clipped:
        st.info(f"δ was optimised for clip(x + δ): every image the model saw is valid. On this image the clipped "
                f"change has ‖·‖₂ {float(delta.norm()):.3g} (δ itself {res.noise_l2:.3g}).")
    else:
        st.warning(f"x + δ is not a valid image: {res.extra.get('out_of_range_fraction', 0):.0%} of its values lie "
                   f"outside [0, 1] on the images δ was fit on. The model was shown those out-of-range values; a "
                   f"saved PNG clips them (see “after clip + 8-bit PNG” below). Tick *keep x + δ a valid image* to "
                   f"optimise δ for valid images instead.")
if level == "input":
    ns = N.nullspace(lm, noise.get("rtol"))
    report = N.verify_invariance(lm, x, delta, ns)
    metrics.update(report.to_dict(), **noise.get("extra", {}))
    noised_display = lm.to_display(x + delta.to(x))
    st.plotly_chart(figures.noise_triplet(lm.to_display(x), N.to_pixels(lm, delta).permute(1, 2, 0).numpy(),
                                          noised_display), key="triplet")
    probs_clean, probs_noised = report.probs_clean, report.probs_noised
    left, right = st.columns(2)
    with left:
        st.plotly_chart(figures.patch_norm_heatmap(N.per_patch_norms(delta, lm.patch_size)), key="patchnorm")
else:
    effect = noise_effect(lm, x, delta, level)
    metrics.update(effect.to_dict())
    probs_clean, probs_noised = effect.probs_clean, effect.probs_noised
    left, right = st.columns(2)
    with left:
        gh, gw = lm.grid_size
        st.plotly_chart(figures.heatmap(delta.norm(dim=1).reshape(gh, gw).numpy(), "‖δ‖ per patch token",
                                        colorbar_title="L2"), key="tokennorm")
with right:
    st.plotly_chart(figures.topk_bars(probs_clean, probs_noised, lm.class_names), key="topk")

if res is not None:
    metrics.update({k: v for k, v in res.to_dict().items() if k != "history"})
    st.plotly_chart(figures.synthesis_curve([h.step for h in res.history], [h.loss for h in res.history],
                                            [h.mse_probs for h in res.history], [h.agreement for h in res.history],
                                            res.config.tol), key="curve")

st.subheader("Verification")
c = st.columns(4)
c[0].metric("relative logit change", f"{metrics['rel_logit_change']:.2e}")
c[1].metric("max |Δ logit|", f"{metrics['max_abs_logit_change']:.2e}")
c[2].metric("top-1 kept", "yes" if metrics["top1_unchanged"] else "no",
            f"{lm.class_name(metrics['top1_clean'])} → {lm.class_name(metrics['top1_noised'])}", **NOTE)
if level == "input":
    c[3].metric("after clip + 8-bit PNG", f"{metrics['quantized_rel_logit_change']:.2e}",
                "top-1 kept" if metrics["quantized_top1_unchanged"] else "top-1 changed", **NOTE)
    st.caption(f"‖W v‖ / (σ_max‖v‖) = {metrics['residual_ratio']:.1e} · {metrics['clipped_fraction']:.1%} of pixel "
               f"values leave [0, 1] before saving · quantising the clean image alone changes the logits by "
               f"{metrics['quantized_baseline_rel_logit_change']:.1e}"
               + (f" · feasible variant kept {metrics['feasible_kept_norm_fraction']:.0%} of the noise norm"
                  if "feasible_kept_norm_fraction" in metrics else ""))
if res is not None:
    c = st.columns(4)
    c[0].metric("‖δ‖₂ (relative)", f"{res.noise_l2:.3g} ({res.noise_rel:.2f}×)")
    c[1].metric("mean Σ Δp² (ε)", f"{res.mse_probs:.4f}", f"permuted δ: {res.permuted_mse_probs:.4f}", **NOTE)
    c[2].metric("top-1 agreement", f"{res.agreement:.1%}", f"permuted δ: {res.permuted_agreement:.1%}", **NOTE)
    c[3].metric("steps", res.steps_run, "reached ε" if res.reached_tolerance else "ε not reached", **NOTE)

if exact or level == "input":
    ns = N.nullspace(lm, noise.get("rtol"))
    with st.expander(f"Singular spectrum of the patch embedding — rank {ns.rank}, nullity {ns.nullity}",
                     expanded=exact):
        st.plotly_chart(figures.singular_spectrum(ns.spectrum.singular_values.tolist(), ns.rank, ns.rtol,
                                                  ns.input_dim), key="spectrum")
        if ns.nullity == 0:
            st.info("This patch embedding has full rank at this tolerance: its exact nullspace is {0}. The noise "
                    "above comes from the 8 weakest singular directions instead — *approximately* null, so the "
                    "logits move a little. Raise rtol to count near-zero singular values as null.")
        parts = N.decompose_random_noise(lm, ns, x)
        st.markdown("**Random noise, split by the projector:** only the visible part moves the logits.")
        st.table({"component": list(parts), "‖v‖₂": [f"{p['noise_l2']:.3g}" for p in parts.values()],
                  "relative logit change": [f"{p['rel_logit_change']:.2e}" for p in parts.values()]})

st.subheader("Download")
buf = io.BytesIO()
torch.save({"delta": noise["delta"].contiguous(), "meta": {k: v for k, v in metrics.items() if not isinstance(v, list)},
            "format": "nullviz-noise-1"}, buf)
downloads = [("noise tensor (.pt)", buf.getvalue(), f"noise_{level}.pt", "application/octet-stream"),
             ("metrics (JSON)", json.dumps(metrics, default=str, indent=2), "metrics.json", "application/json"),
             ("top-k chart (HTML)", figure_html(figures.topk_bars(probs_clean, probs_noised, lm.class_names)),
              "topk.html", "text/html")]
if level == "input":
    downloads.insert(0, ("noised image (PNG)", png_bytes(lm.to_display(x + delta.to(x))), "noised.png", "image/png"))
for col, (label, payload, filename, mime) in zip(st.columns(len(downloads)), downloads):
    col.download_button(label, payload, filename, mime)
