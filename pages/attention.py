"""Attention: inside the model, clean vs. noised — attention maps, rollout, per-layer change, attributions."""

import io
import json

import numpy as np
import streamlit as st

from app_state import current_model, figure_html, image_picker, require_shell, server_settings, show_error
from nullviz import figures
from nullviz import nullspace as N
from nullviz.attention import compare
from nullviz.attribution import METHODS, attribute
from nullviz.errors import NullvizError
from nullviz.deploy import check_upload_size
from nullviz.synthesis import check_noise_fits, load_noise_bytes

require_shell(__file__)

lm = current_model()
st.title("Attention, clean vs. noised")

noise = st.session_state.get("current_noise")
carried = noise is not None and noise.get("model") == lm.name and "current_image" in st.session_state
sources = (["noise from the Nullspace page"] if carried else []) + ["fresh exact nullspace noise", "upload a noise file"]
source = st.radio("Noise", sources, horizontal=True, key="att_source")

if source == "noise from the Nullspace page":
    chosen = st.session_state["current_image"]
    st.caption(f"Image **{chosen.name}** and its {noise['kind']} noise ({noise['level']} level) from the Nullspace page.")
    delta, level = noise["delta"], noise["level"]
else:
    chosen = image_picker("att")
    delta, level = None, "input"
    if source == "fresh exact nullspace noise":
        c = st.columns(2)
        magnitude = c[0].number_input("magnitude (normalised units)", min_value=0.0, value=1.0, key="att_mag")
        seed = c[1].number_input("seed", min_value=0, value=0, key="att_seed")
        ns = N.nullspace(lm)
        delta = N.sample_noise(ns, lm.img_size, N.NoiseSpec(magnitude=float(magnitude), seed=int(seed),
                                                           weakest=0 if ns.nullity else 8))
    else:
        up = st.file_uploader("noise file (.pt saved by nullviz)", key="att_noise_file")
        if up is not None:
            try:
                check_upload_size(up.name, up.size, server_settings().max_upload_mb)
                saved = load_noise_bytes(up.getvalue(), up.name)
                check_noise_fits(lm, saved.delta, saved.level)
                delta, level = saved.delta, saved.level
            except NullvizError as exc:
                show_error(exc)
        if delta is None:
            st.info("Upload a noise file saved from the Nullspace page (or by `python -m nullviz synthesize --out`).")
            st.stop()

x = lm.preprocess(chosen.image)
c = st.columns(2)
fusion = c[0].selectbox("rollout head fusion", ["mean", "max", "min"], key="att_fusion")
discard = c[1].slider("rollout discard ratio", 0.0, 0.95, 0.0, 0.05, key="att_discard")
try:
    cmp = compare(lm, x, delta, level, fusion, float(discard))
except NullvizError as exc:
    show_error(exc)
    st.stop()

d = cmp.to_dict()
st.markdown(f"Prediction clean **{lm.class_name(d['top1_clean'])}**, noised **{lm.class_name(d['top1_noised'])}** · "
            f"largest per-layer attention change (total variation) **{max(d['layer_attention_distance']):.2e}**")

st.plotly_chart(figures.depth_curve({"token representation ‖Δh‖/‖h‖": d["layer_repr_change"],
                                     "attention total variation": d["layer_attention_distance"]},
                                    "where the noise is absorbed: change per block", log_y=True), key="depth")

c = st.columns(2)
block = c[0].slider("block", 1, cmp.clean.layers, cmp.clean.layers, key="att_layer",
                    help="Blocks are numbered from 1, as on the depth chart above.")
layer = block - 1
head_opts = ["mean of heads"] + [f"head {h}" for h in range(cmp.clean.heads)]
head = c[1].selectbox("head", head_opts, key="att_head")
maps_c, maps_n = cmp.clean.cls_maps()[:, 0], cmp.noised.cls_maps()[:, 0]  # [L, H, gh, gw]
if head == head_opts[0]:
    mc, mn = maps_c[layer].mean(0), maps_n[layer].mean(0)
else:
    h = int(head.split()[1])
    mc, mn = maps_c[layer, h], maps_n[layer, h]
query = cmp.clean.query_label
if not cmp.clean.has_class_token:
    st.info(f"The query of these maps and of the rollout is the {query}.")
st.plotly_chart(figures.map_triplet(mc.numpy(), mn.numpy(),
                                    f"{'CLS' if cmp.clean.has_class_token else 'mean patch query'} → patch attention, "
                                    f"block {block}, {head}"), key="triplet")

img = lm.to_display(x)
img_noised = lm.to_display(x + delta.to(x)) if level == "input" else img
rc, rn = (m[0].numpy() for m in cmp.rollout_maps())
c = st.columns(2)
c[0].plotly_chart(figures.overlay(img, rc, "rollout, clean"), key="roll_c")
c[1].plotly_chart(figures.overlay(img_noised, rn, "rollout, noised"), key="roll_n")

with st.expander(f"All layers × heads ({'CLS' if cmp.clean.has_class_token else 'mean patch query'} attention)"):
    st.plotly_chart(figures.attention_grid(maps_c.numpy(), title="clean"), key="grid_c")
    st.plotly_chart(figures.attention_grid((maps_n - maps_c).numpy(), title="noised − clean",
                                           symmetric_range=float(maps_c.max())), key="grid_d")

st.subheader("Attribution")
c = st.columns(3)
method = c[0].selectbox("method", METHODS, key="att_method")
target_opts = ["predicted class"] + list(lm.class_names)
target_name = c[1].selectbox("class", target_opts, key="att_target")
steps = c[2].number_input("IG steps", min_value=2, max_value=256, value=32, key="att_steps")
target = None if target_name == target_opts[0] else target_opts.index(target_name) - 1
if st.button("Compute attributions", key="att_go"):
    try:
        pixels = lm.denormalize(x)
        if level == "input":
            a_clean = attribute(lm, pixels, method, target, steps=int(steps))
            a_noised = attribute(lm, lm.denormalize(x + delta.to(x)), method,
                                 target if target is not None else a_clean.target[0], steps=int(steps))
        else:
            a_clean = attribute(lm, pixels, method, target, steps=int(steps))
            a_noised = attribute(lm, pixels, method, target if target is not None else a_clean.target[0],
                                 token_noise=delta, steps=int(steps))
        st.session_state["att_result"] = (method, a_clean, a_noised)
    except NullvizError as exc:
        show_error(exc)
if "att_result" in st.session_state:
    m, a_clean, a_noised = st.session_state["att_result"]
    fig = figures.attribution_pair(a_clean.heatmap()[0].numpy(), a_noised.heatmap()[0].numpy(), m)
    st.plotly_chart(fig, key="attr")
    if a_clean.convergence_delta is not None:
        st.caption(f"Integrated Gradients completeness check (Σ attributions − (f(x) − f(0))): clean "
                   f"{a_clean.convergence_delta[0]:.3g}, noised {a_noised.convergence_delta[0]:.3g}; "
                   f"more steps shrink it.")

st.subheader("Download")
arrays = cmp.arrays()
buf = io.BytesIO()
np.savez_compressed(buf, **arrays)
c = st.columns(3)
c[0].download_button("attention + rollouts (.npz)", buf.getvalue(), "attention.npz", "application/octet-stream")
c[1].download_button("per-layer numbers (JSON)", json.dumps(d, indent=2), "attention.json", "application/json")
c[2].download_button("depth curve (HTML)", figure_html(figures.depth_curve(
    {"repr change": d["layer_repr_change"], "attention TV": d["layer_attention_distance"]})), "depth.html", "text/html")
st.caption("Every chart's toolbar (camera icon) saves it as PNG.")
