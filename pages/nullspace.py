"""Nullspace: exact, feasible-exact, LayerNorm and optimised (approximate) noise for one image, with the proof."""

import html
import json
import time
from dataclasses import replace

import streamlit as st

from app_state import (current_model, figure_html, image_picker, model_key, own_synthesis_sets_shown, plain, png_bytes,
                       require_shell, server_settings, session_gone, show_error)
from nullviz import figures
from nullviz.core.errors import NullvizError
from nullviz.data import OWN_SOURCE, image_digest, model_own_data, synthesis_source_label, synthesis_sets, synthesis_sources
from nullviz.noise import exact as N
from nullviz.noise.approximate import (FIT_METRIC_IMAGES, MIN_VERDICT_IMAGES, clipped_delta,
                                       default_synthesis_config, frontier, noise_effect, parse_sweep, probs_change,
                                       sweep_size, synthesize)
from nullviz.noise.files import Noise, noise_bytes
from nullviz.noise.layernorm import cached_patch_mean_direction, layernorm_residual, sample_layernorm_noise

require_shell(__file__)

#: The live synthesis curve: first drawn after this long, then redrawn as often. Each redraw costs the browser,
#: on the cores δ uses where browser and server share a machine, more than a step costs torch: a δ of a few
#: seconds shows its progress line alone, a long one its curve too (at 3 s a default δ took 19.8 s in Chromium,
#: which spent 6.6 s of CPU; without the live curve and with the line once a second, 15.7–16.3 s and 3.2–3.6 s).
LIVE_CURVE_SECONDS = 10.0
#: How often the progress line is updated (every step sent 150 messages per δ for the browser to draw).
PROGRESS_SECONDS = 1.0

NOTE = dict(delta_color="off", delta_arrow="off")  # a metric's grey side note, not a change
MODES = ("Exact", "Exact, valid image (feasible)", "Approximate — encoder level", "Approximate — input level",
         "Exact — LayerNorm directions")

lm = current_model()
DEFAULTS = default_synthesis_config(lm.name)  # the model's own measured λ where it has one
OWN = model_own_data(lm.name)  # the model's own training images (digits, cluttered scenes), or None (timm)
SOURCES = synthesis_sources(OWN)
st.title("Nullspace noise")
chosen = image_picker("ns")
x = lm.preprocess(chosen.image)
st.session_state["current_image"] = chosen

mode = st.radio("Noise", MODES, horizontal=True, key="ns_mode")
layernorm = mode == MODES[4]
exact = mode in MODES[:2] or layernorm

with st.form("ns_form"):
    if layernorm:
        st.caption("Every LayerNorm first subtracts each token's mean. A patch change v with W v ∝ 1 shifts its "
                   "token by the same number on every channel, which every norm removes: one exact direction per "
                   "patch (W⁺1), even where W itself has full rank.")
        c = st.columns(2)
        magnitude = c[0].number_input("magnitude (RMS L2 per patch, normalised units)", min_value=0.0, value=1.0,
                                      step=0.5, key="ns_ln_magnitude")
        seed = c[1].number_input("seed", min_value=0, value=0, step=1, key="ns_ln_seed")
    elif exact:
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
        lim = c[0].number_input("start size lim", min_value=0.01, value=DEFAULTS.lim, key="ns_lim",
                                help="δ starts as uniform noise in (−lim, lim).")
        lr = c[1].number_input("learning rate", min_value=1e-4, value=DEFAULTS.lr, format="%.4f", key="ns_lr")
        lam = c[2].number_input("λ (pushes δ larger)", min_value=0.0, value=DEFAULTS.lam, format="%.3f", key="ns_lam",
                                help="0: the research code's rule (stop once inside ε; δ barely leaves its start). "
                                     "> 0: grow δ for every step and keep the largest δ inside ε.")
        tol = c[3].number_input("tolerance ε (mean Σ Δp²)", min_value=1e-5, value=DEFAULTS.tol, format="%.4f",
                                key="ns_tol")
        c = st.columns(4)
        st.session_state.setdefault("ns_steps", DEFAULTS.steps)  # (the Learn page may preset it)
        steps = c[0].number_input("steps", min_value=1, max_value=5000, key="ns_steps")
        source = c[1].selectbox("optimise on", SOURCES, key="ns_source",
                                format_func=lambda k: synthesis_source_label(k, OWN),
                                help=None if OWN else f"{plain(lm.label)} has no training images of its own here: δ is fit "
                                "on the sample photographs (or the current image), and gets a verdict only on "
                                f"{MIN_VERDICT_IMAGES} or more images it never saw.")
        batch = c[2].number_input("batch (images per step)", min_value=1, max_value=1024, value=DEFAULTS.batch_size,
                                  key="ns_batch", help="δ is fit on minibatches of this many images, drawn from "
                                                       "all the images the source offers.")
        seed = c[3].number_input("seed", min_value=0, value=0, step=1, key="ns_seed_approx")
        clip = mode == MODES[3] and st.checkbox(
            "keep x + δ a valid image (optimise for clip(x + δ) to [0, 1])", key="ns_clip",
            help="Without this, most of x + δ lies outside [0, 1]: not an image a camera or a file can hold.")
    go = st.form_submit_button("Make noise", type="primary")


def approximate_inputs() -> tuple:
    """The approximate modes' settings and images: config, the images δ is fit on, the images that select δ
    (None: held out of the fit images), the images it is judged on (None: held out), what each set is, and the
    sets' clean logits where they are kept for every synthesis (keyword arguments of ``synthesize``; none:
    computed as needed)."""
    # the model's measured settings (selection margin, look interval…) with the form's values over them
    cfg = replace(DEFAULTS, level="encoder" if mode == MODES[2] else "input", lim=float(lim), lr=float(lr),
                  lam=float(lam), tol=float(tol), steps=int(steps), seed=int(seed), clip=bool(clip),
                  batch_size=int(batch))
    if OWN and source == OWN_SOURCE:
        prepared = own_synthesis_sets_shown(lm)
        return cfg, prepared.fit, prepared.validation, prepared.test, prepared.used, prepared.known_logits()
    sets = synthesis_sets(source, chosen.image, own=OWN, current_is_small=lm.img_size[0] <= 64)
    return (cfg, lm.preprocess(sets.fit), None if sets.validation is None else lm.preprocess(sets.validation),
            None if sets.test is None else lm.preprocess(sets.test), sets.used, {})


if go:
    try:
        if layernorm:
            v = sample_layernorm_noise(lm, lm.img_size, float(magnitude), int(seed))
            st.session_state["current_noise"] = Noise(v, "input", "layernorm", {"image": chosen.name},
                                                      made_for=model_key(lm))
        elif exact:
            ns = N.nullspace(lm, spec_rtol)
            v = N.sample_noise(ns, lm.img_size, N.NoiseSpec(magnitude=float(magnitude), norm=norm, shared=shared,
                                                           seed=int(seed)))
            extra = {}
            if mode == MODES[1] and ns.nullity > 0:
                feas = N.feasible_noise(lm, ns, x, v)
                v = feas.noise
                extra = {"feasible_kept_norm_fraction": feas.kept_norm_fraction,
                         "feasible_max_box_violation": feas.max_box_violation}
            st.session_state["current_noise"] = Noise(v, "input", "exact", {"rtol": ns.rtol, **extra,
                                                                          "image": chosen.name,
                                                                          "image_digest": image_digest(chosen.image)},
                                                      made_for=model_key(lm))
        else:
            cfg, images, validation, check, used, known_logits = approximate_inputs()
            level = cfg.level
            bar = st.progress(0.0, text="synthesizing δ…")
            chart = st.empty()
            hist = {"step": [], "loss": [], "mse": [], "agree": []}
            drawn = [time.monotonic(), 0.0]  # when the live curve and the progress line were last sent

            def on_step(s):
                for k, val in zip(hist, (s.step, s.loss, s.mse_probs, s.agreement)):
                    hist[k].append(val)
                now = time.monotonic()
                if now - drawn[1] >= PROGRESS_SECONDS or s.step + 1 == cfg.steps:
                    drawn[1] = now
                    bar.progress((s.step + 1) / cfg.steps, text=f"step {s.step + 1}/{cfg.steps} · loss {s.loss:.4f} "
                                 f"· Σ Δp² {s.mse_probs:.4f} · agreement {s.agreement:.0%}")
                # every LIVE_CURVE_SECONDS, not every k steps: the browser redraws the figure on the cores δ uses
                if now - drawn[0] >= LIVE_CURVE_SECONDS:
                    drawn[0] = now
                    chart.plotly_chart(figures.synthesis_curve(hist["step"], hist["loss"], hist["mse"],
                                                               hist["agree"], cfg.tol), key=f"live_{s.step}")

            result = synthesize(lm, images, cfg, callback=on_step, check_images=check, validation_images=validation,
                                images_used=used, **known_logits)
            bar.progress(1.0, text=f"done: {result.steps_run} steps in {result.seconds:.1f}s · "
                                   f"{result.verdict_phrase}")
            chart.empty()
            st.session_state["current_noise"] = Noise(result.delta, level, "approximate", {"image": chosen.name},
                                                      made_for=model_key(lm), synthesis=result, given_images=images)
    except NullvizError as exc:
        show_error(exc)

noise = st.session_state.get("current_noise")
if noise is not None and noise.made_for != model_key(lm):
    st.info("The noise in memory was made for another model; make new noise for this one.")
    noise = None
if noise is None:
    st.info("Choose a kind of noise and press **Make noise**.")
    st.stop()

delta, level = noise.delta, noise.level
metrics: dict = {"model": lm.label, "image": chosen.name, "kind": noise.kind, "level": level}
res = noise.synthesis
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
    ns = N.nullspace(lm, noise.meta.get("rtol"))
    report = N.verify_invariance(lm, x, delta, ns)
    # a feasible variant is fitted to one image's pixel box: its numbers are about that image only
    feasible_here = noise.meta.get("image_digest") == image_digest(chosen.image)
    metrics.update(report.to_dict(), **{k: v for k, v in noise.meta.items() if k.startswith("feasible_")
                                        and feasible_here})
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
    # δ is added to this image's patch tokens, not its pixels: the image itself is what the numbers are about
    st.plotly_chart(figures.image_row([lm.to_display(x)], [f"the image analysed: {html.escape(chosen.name)}"],
                                      height=260), key="encoder_image")
    left, right = st.columns(2)
    with left:
        gh, gw = lm.grid_size
        st.plotly_chart(figures.heatmap(delta.norm(dim=1).reshape(gh, gw).numpy(), "‖δ‖ per patch token",
                                        colorbar_title="L2 (token units)"), key="tokennorm")
with right:
    st.plotly_chart(figures.topk_bars(probs_clean, probs_noised, lm.class_names), key="topk")

if res is not None:
    metrics.update({k: v for k, v in res.to_dict().items() if k != "history"})
    st.plotly_chart(figures.synthesis_curve([h.step for h in res.history], [h.loss for h in res.history],
                                            [h.mse_probs for h in res.history], [h.agreement for h in res.history],
                                            res.config.tol), key="curve")
    st.caption("The curve is measured on the fit images, one batch per step.")

st.subheader("Verification")
if res is not None:
    st.markdown(f"**This image** ({plain(chosen.name)})")
c = st.columns(5 if res is not None and level == "input" else 4)
c[0].metric("relative logit change", f"{metrics['rel_logit_change']:.2e}")
c[1].metric("max |Δ logit|", f"{metrics['max_abs_logit_change']:.2e}")
c[2].metric("top-1 kept", "yes" if metrics["top1_unchanged"] else "no",
            f"{lm.class_name(metrics['top1_clean'])} → {lm.class_name(metrics['top1_noised'])}", **NOTE)
if res is not None:
    image_mse = probs_change(probs_clean, probs_noised)
    metrics["image_mse_probs"] = image_mse
    c[3].metric("Σ Δp² on this image", f"{image_mse:.2e}",
                f"inside ε = {res.config.tol:g}" if image_mse < res.config.tol else f"outside ε = {res.config.tol:g}",
                **NOTE)
if level == "input":
    c[-1].metric("after clip + 8-bit PNG", f"{metrics['quantized_rel_logit_change']:.2e}",
                "top-1 kept" if metrics["quantized_top1_unchanged"] else "top-1 changed", **NOTE)
    if noise.kind == "layernorm":
        metrics["layernorm_residual"] = layernorm_residual(lm, delta)
    certificate = (f"of the token shift W v, the part a LayerNorm keeps: {metrics['layernorm_residual']:.1e}"
                   if noise.kind == "layernorm" else f"‖W v‖ / (σ_max‖v‖) = {metrics['residual_ratio']:.1e}")
    st.caption(f"{certificate} · {metrics['clipped_fraction']:.1%} of pixel "
               f"values leave [0, 1] before saving · quantising the clean image alone changes the logits by "
               f"{metrics['quantized_baseline_rel_logit_change']:.1e}"
               + (f" · feasible variant kept {metrics['feasible_kept_norm_fraction']:.0%} of the noise norm"
                  if "feasible_kept_norm_fraction" in metrics else "")
               + (f" · the feasible variant was fitted to {plain(noise.meta.get('image', 'another image'))}'s pixel "
                  f"range, not this image's: make noise again to fit it here"
                  if "feasible_kept_norm_fraction" in noise.meta and not feasible_here else ""))
if res is not None:
    st.markdown(f"The three numbers above are about **this image** ({plain(chosen.name)})"
                + (", one of the images δ was fit on." if noise.given_images is not None
                   and res.was_fit_on(noise.given_images, x)  # by content, for whichever image is shown now
                   else ", which is not among the images δ was fit on.")
                + " The numbers below are about sets of images.")
    c = st.columns(4)
    # side notes short enough for a quarter of the page (longer ones were cut mid-number); the rest in help
    c[0].metric("‖δ‖₂ (relative)", f"{res.noise_l2:.3g} ({res.noise_rel:.2f}×)", f"travelled {res.travelled_l2:.3g}",
                help=f"‖δ‖₂ relative to the mean norm of what it is added to; optimisation moved δ "
                     f"{res.travelled_l2:.3g} from its random start (‖δ₀‖ {res.start_l2:.3g}).", **NOTE)
    c[1].metric("steps", res.steps_run, f"λ {res.config.lam:g}, lim {res.config.lim:g}", **NOTE)
    fit, check, val = res.fit, res.check, res.validation
    fit_n = fit.images
    with st.container(key="ns_images_used"):
        st.markdown("**Which images each number is about**\n\n" + "\n".join(
            f"- *{role}*: {text}" for role, text in res.images_used.items()))
    st.markdown(f"**The {fit_n:,} images δ was fit on**" + (f" (measured on {FIT_METRIC_IMAGES} of them)"
                                                           if fit_n > FIT_METRIC_IMAGES else ""))
    c = st.columns(4)
    c[0].metric("mean Σ Δp²", f"{fit.mse_probs:.2e}", f"permuted δ: {fit.permuted_mse_probs:.2e}", **NOTE)
    c[1].metric("top-1 agreement", f"{fit.agreement:.1%}", f"permuted δ: {fit.permuted_agreement:.1%}", **NOTE)
    c[2].metric("mean ‖Δ logits‖", f"{fit.logit_distance:.3g}")
    if val is not None:
        c[3].metric("validation: mean Σ Δp²", f"{val.mse_probs:.2e}", f"agreement {val.agreement:.1%}",
                    help=f"{val.images} training images δ was not fit on: they chose δ (when to stop, how large "
                         f"it may be); top-1 agreement {val.agreement:.1%}.", **NOTE)
    if check is not None:
        check_n = check.images
        st.markdown(f"**{check_n} images δ never saw** — what invisibility means")
        c = st.columns(4)
        short_verdict = (f"no verdict ({check_n} unseen)" if res.verdict.startswith("no verdict") else
                         f"{res.verdict} = {res.config.tol:g}")
        c[0].metric("mean Σ Δp² (ε)", f"{check.mse_probs:.2e}", short_verdict, help=res.verdict_phrase, **NOTE)
        c[1].metric("top-1 agreement", f"{check.agreement:.1%}", f"permuted δ: {check.permuted_agreement:.1%}",
                    **NOTE)
        c[2].metric("mean ‖Δ logits‖", f"{check.logit_distance:.3g}")
        c[3].metric("same-norm controls (Σ Δp²)", f"{check.permuted_mse_probs:.2e}",
                    f"Gaussian {check.gaussian_mse_probs:.1e}",
                    help=f"Noise of δ's norm on the same images: δ permuted {check.permuted_mse_probs:.2e} (the "
                         f"value), Gaussian {check.gaussian_mse_probs:.2e}, δ's random start "
                         f"{check.random_start_mse_probs:.2e}.", **NOTE)
        if check_n < MIN_VERDICT_IMAGES:
            st.info(f"Only {check_n} unseen image{'s' if check_n != 1 else ''}: too few for a verdict (it needs "
                    f"{MIN_VERDICT_IMAGES}; one image moves the mean by more than ε tells apart). Optimise on the "
                    f"model's own training images, or upload a folder, for a verdict.")
        if not res.beats_permuted_on_check:
            st.warning("On images it never saw, this δ is **no more invisible than its own entries in random "
                       "places**: it is not an approximate-nullspace direction, only small. Raise λ or the steps.")
    else:
        st.info("No images were held out (δ was fit on a single image and no other set was available), so "
                "nothing here says how δ does on images it never saw.")

def trace_frontier(lams_text: str, lims_text: str, steps_text: str) -> None:
    """One synthesis per (λ, lim, steps) of the sweep, on the fit and check images of the settings above."""
    settings = server_settings()
    grid = parse_sweep({"lam": lams_text, "lim": lims_text, "steps": steps_text},
                       max_points=settings.max_sweep_points, max_total_steps=settings.max_sweep_steps)
    base, images, validation, check, _, known_logits = approximate_inputs()
    points, total = sweep_size(grid, base)
    bar = st.progress(0.0, text=f"tracing {points} syntheses, {total:,} steps in all…")
    started = time.perf_counter()

    def progress(k, n, p):
        left = (time.perf_counter() - started) / k * (n - k)
        bar.progress(k / n, text=f"{k}/{n}: {p.label} → ‖δ‖ {p.noise_l2:.3g}, unseen Σ Δp² "
                                 f"{p.check_mse_probs:.1e}" + (f" · about {left:,.0f} s left" if k < n else ""))

    front = frontier(lm, images, base, lams=grid["lam"], lims=grid["lim"], steps=grid["steps"], check_images=check,
                     progress=progress, validation_images=validation, should_stop=session_gone(), **known_logits)
    st.session_state["ns_frontier"] = front


@st.fragment
def frontier_panel() -> None:
    """The λ/lim/steps sweep: a fragment, so tracing the frontier reruns only this panel, not the page's
    verification of the noise above."""
    with (st.container(key="ns_frontier_panel"),
          st.expander("The frontier: how large can δ be and stay invisible on images it never saw?")):
        st.caption("Each point is one synthesis with the settings above except the swept ones, on the same fit "
                   "and check images; the controls (same norm, same images) show what *optimised* buys.")
        with st.form("ns_frontier_form"):
            c = st.columns(3)
            lams_text = c[0].text_input("λ values", "0, 0.1, 0.5, 1, 2", key="ns_sweep_lams")
            lims_text = c[1].text_input("lim values", f"{DEFAULTS.lim:g}", key="ns_sweep_lims")
            steps_text = c[2].text_input("steps", f"{DEFAULTS.steps}", key="ns_sweep_steps")
            sweep = st.form_submit_button("Trace the frontier")
            settings = server_settings()
            if settings.max_sweep_points or settings.max_sweep_steps:
                st.caption(f"This server traces at most {settings.max_sweep_points} syntheses and "
                           f"{settings.max_sweep_steps:,} synthesis steps in all (the λ, lim and steps values "
                           f"multiplied); the default grid is 5 syntheses of {DEFAULTS.steps} steps.")
        if sweep:
            try:
                trace_frontier(lams_text, lims_text, steps_text)
            except NullvizError as exc:
                show_error(exc)
        front = st.session_state.get("ns_frontier")
        if front is not None:
            st.plotly_chart(figures.frontier_plot(front), key="frontier")
            best = front.allowed()
            st.markdown(f"Largest δ within ε = {front.tol:g} on the {front.num_check_images} unseen images: "
                        + (f"**‖δ‖ = {best.noise_l2:.3g}** ({best.label}; travelled {best.travelled_l2:.3g} from its "
                           f"start)" if best else "**none** of these settings."))
            st.download_button("frontier (JSON)", json.dumps(front.to_dict(), indent=2), "frontier.json",
                               "application/json", key="dl_frontier", on_click="ignore")


if not exact:
    frontier_panel()

if exact or level == "input":
    if noise.kind == "layernorm":
        ln_dir = cached_patch_mean_direction(lm)
        st.caption(f"W⁺1 reaches the all-ones token shift to {ln_dir.residual:.1e} (‖W W⁺1 − 1‖/‖1‖); this kind of "
                   "noise moves every patch token, and every block's residual stream, by a multiple of 1 — the "
                   "Attention page shows the residual stream moving while the attention does not.")
    ns = N.nullspace(lm, noise.meta.get("rtol"))
    with st.expander(f"Singular spectrum of the patch embedding — rank {ns.rank}, nullity {ns.nullity}",
                     expanded=exact):
        st.plotly_chart(figures.singular_spectrum(ns.spectrum.singular_values.tolist(), ns.rank, ns.rtol,
                                                  ns.input_dim), key="spectrum")
        if ns.nullity == 0:
            st.info("This patch embedding has full rank at this tolerance: its exact nullspace is {0}. The noise "
                    f"above comes from the {N.FULL_RANK_WEAKEST} weakest singular directions instead — "
                    "*approximately* null, so the logits move a little. Raise rtol to count near-zero singular values as null — or choose "
                    "*Exact — LayerNorm directions*: one exact direction per patch that W's rank does not decide.")
        parts = N.decompose_random_noise(lm, ns, x)
        st.markdown("**Random noise, split by the projector:** only the visible part moves the logits.")
        st.table({"component": list(parts), "‖v‖₂": [f"{p['noise_l2']:.3g}" for p in parts.values()],
                  "relative logit change": [f"{p['rel_logit_change']:.2e}" for p in parts.values()]})

st.subheader("Download")
downloads = [("noise tensor (.pt)", noise_bytes(delta, {k: v for k, v in metrics.items() if not isinstance(v, list)}),
              f"noise_{level}.pt", "application/octet-stream"),
             ("metrics (JSON)", json.dumps(metrics, default=str, indent=2), "metrics.json", "application/json"),
             ("top-k chart (HTML)", figure_html(figures.topk_bars(probs_clean, probs_noised, lm.class_names)),
              "topk.html", "text/html")]
if level == "input":
    downloads.insert(0, ("noised image (PNG)", png_bytes(lm.to_display(x + delta.to(x))), "noised.png", "image/png"))
for col, (label, payload, filename, mime) in zip(st.columns(len(downloads)), downloads):
    col.download_button(label, payload, filename, mime, on_click="ignore")
