"""Attention: inside the model, clean vs. noised — attention maps, rollout, per-layer change, attributions."""

import io
import json

import numpy as np
import streamlit as st

from app_state import (block_slider, cached_model, current_model, figure_html, fingerprint, follow_job_result, image_picker,
                       job_threads, model_key, own_checkpoints, plain, require_shell, server_settings, shared_figure, shared_result,
                       show_error, submit_job, upload_widget, workspace)
from nullviz import figures
from nullviz.core.errors import NullvizError
from nullviz.data import SAMPLE_PHOTOS, extract_image_folder_zip, held_out_or_sample_photos, image_folder, model_own_data
from nullviz.inspection.attention import (HeadEmbedding, compare, compare_models, contrast_label, contrast_noises,
                                          head_embedding, head_embedding_size, head_statistics, noise_contrast,
                                          query_index, query_maps, save_conditions, set_statistics)
from nullviz.inspection.attribution import (ATTRIBUTION_METHODS, SANITY_TOLERANCE, attribute, attribution_split,
                                           map_change, nullspace_sanity)
from nullviz.inspection.faithfulness import faithfulness
from nullviz.jobs.queue import head_embedding_params
from nullviz.models import ModelSpec, embedded_model
from nullviz.noise import exact as N
from nullviz.noise.approximate import check_noise_fits
from nullviz.noise.files import load_noise_bytes
from nullviz.noise.kinds import label as noise_label
from nullviz.robustness.evaluation import images_tensor
from nullviz.server.settings import check_upload_size

require_shell(__file__)

lm = current_model()
st.title("Attention, clean vs. noised")

noise = st.session_state.get("current_noise")
carried = noise is not None and noise.made_for == model_key(lm) and "current_image" in st.session_state
sources = (["noise from the Nullspace page"] if carried else []) + ["fresh exact nullspace noise", "upload a noise file"]
source = st.radio("Noise", sources, horizontal=True, key="att_source")

if source == "noise from the Nullspace page":
    chosen = st.session_state["current_image"]
    st.caption(f"Image **{plain(chosen.name)}** and its {noise_label(noise.kind)} ({noise.level} level) from the Nullspace page.")
    delta, level = noise.delta, noise.level
else:
    chosen = image_picker("att")
    delta, level = None, "input"
    if source == "fresh exact nullspace noise":
        c = st.columns(2)
        magnitude = c[0].number_input("magnitude (normalised units)", min_value=0.0, value=1.0, key="att_mag")
        seed = c[1].number_input("seed", min_value=0, value=0, key="att_seed")
        ns = N.nullspace(lm)
        delta = N.sample_noise(ns, lm.img_size, N.NoiseSpec(magnitude=float(magnitude), seed=int(seed)))
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
INPUTS = fingerprint(lm.name, lm.checkpoint, chosen.name, chosen.image, level, delta)  # what results are about
c = st.columns(2)
fusion = c[0].selectbox("rollout head fusion", ["mean", "max", "min"], key="att_fusion")
discard = c[1].slider("rollout discard ratio", 0.0, 0.95, 0.0, 0.05, key="att_discard")
try:
    # the same for every student on the same inputs: computed once per server (a class's first views)
    CMP_KEY = fingerprint(INPUTS, str(lm.device), fusion, float(discard))
    cmp = shared_result(compare, CMP_KEY, lm, x, delta, level, fusion, float(discard))
except NullvizError as exc:
    show_error(exc)
    st.stop()

d = cmp.to_dict()
st.markdown(f"Prediction clean **{plain(lm.class_name(d['top1_clean']))}**, noised **{plain(lm.class_name(d['top1_noised']))}** · "
            f"largest per-layer attention change (total variation) **{max(d['layer_attention_distance']):.2e}**")

st.plotly_chart(shared_figure(figures.depth_curve, fingerprint(CMP_KEY, "depth"),
                              {"token representation ‖Δh‖/‖h‖": d["layer_repr_change"],
                               "attention total variation": d["layer_attention_distance"]},
                              "where the noise is absorbed: change per block", log_y=True, scale=1.0),
                key="depth")  # both are relative (≤ 1): drawn on that scale, rounding said in words

img = lm.to_display(x)
img_noised = lm.to_display(x + delta.to(x)) if level == "input" else img
QUERY = cmp.clean.query_label
OUTPUT_QUERY = "CLS" if cmp.clean.has_class_token else "mean patch query"
if not cmp.clean.has_class_token:
    st.info(f"The query of the output maps and of the rollout is the {QUERY}.")


@st.fragment
def block_view() -> None:
    """One block and head, the output query's attention: a fragment, so moving the slider reruns only this."""
    c = st.columns(2)
    layers = cmp.clean.layers
    # The slider's value is written into its state at every run, never left to a default: after a run that
    # stopped before the slider (the noise source changed, no file yet) the browser drew the slider at its
    # default while the kept state (another block) drew the charts.
    kept = st.session_state.get("att_layer")
    st.session_state["att_layer"] = kept if isinstance(kept, int) and 1 <= kept <= layers else layers
    block = block_slider(c[0], "block", layers, "att_layer",
                         help="Blocks are numbered from 1 everywhere (depth charts, grids, statistics).")
    layer = block - 1
    head_opts = ["mean of heads"] + [f"head {h + 1}" for h in range(cmp.clean.heads)]  # from 1, as blocks
    head = c[1].selectbox("head", head_opts, key="att_head")
    maps_c, maps_n = cmp.clean.cls_maps()[:, 0], cmp.noised.cls_maps()[:, 0]  # [L, H, gh, gw]
    if head == head_opts[0]:
        mc, mn = maps_c[layer].mean(0), maps_n[layer].mean(0)
    else:
        h = int(head.split()[1]) - 1
        mc, mn = maps_c[layer, h], maps_n[layer, h]
    # a view's figures are shared too: a class opening the page draws each default figure once
    st.plotly_chart(shared_figure(figures.map_triplet, fingerprint(CMP_KEY, "triplet", block, head), mc.numpy(),
                                  mn.numpy(), f"{OUTPUT_QUERY} → patch attention, block {block}, {head}"), key="triplet")
    rc, rn = shared_result(lambda: [m[0].numpy() for m in cmp.rollout_maps()], fingerprint(CMP_KEY, "rollouts"))
    c = st.columns(2)
    c[0].plotly_chart(shared_figure(figures.overlay, fingerprint(CMP_KEY, "roll_c"), img, rc, "rollout, clean",
                                    units="rollout weight"), key="roll_c")
    c[1].plotly_chart(shared_figure(figures.overlay, fingerprint(CMP_KEY, "roll_n"), img_noised, rn,
                                    "rollout, noised", units="rollout weight"), key="roll_n")
    with st.expander(f"All blocks × heads ({OUTPUT_QUERY} attention)"):  # figures of the shared result: shared
        st.plotly_chart(shared_figure(figures.attention_grid, fingerprint(CMP_KEY, "grid_c"), maps_c.numpy(),
                                      title="clean"), key="grid_c")
        st.plotly_chart(shared_figure(figures.attention_grid, fingerprint(CMP_KEY, "grid_d"),
                                      (maps_n - maps_c).numpy(), title="noised − clean",
                                      symmetric_range=float(maps_c.max())), key="grid_d")


block_view()

st.subheader("Any query token, and the full attention matrix")
TOKENS = cmp.clean.tokens
GH, GW = cmp.clean.grid_size
PREFIX = cmp.clean.num_prefix_tokens
QUERY_OPTIONS = (["CLS"] if cmp.clean.has_class_token else []) + [f"patch ({r}, {c})" for r in range(GH) for c in range(GW)]


def _query_patch(label: str) -> tuple[int, int] | None:
    if label == "CLS":
        return None
    r, c = label[len("patch ("):-1].split(", ")
    return int(r), int(c)


def _point_values(custom) -> list:
    """A selected point's customdata as a list (the chart event gives typed-array rows as {0: …, 1: …})."""
    return list(custom.values()) if isinstance(custom, dict) else list(custom or [])


def _selected_tokens(points: list, conditions: list[str]) -> list[tuple[int, int, int, str, int]]:
    """The head view's selected points as distinct (image from 0, row, column, condition, 0 query / 1 key): each
    condition draws two traces, queries then keys, whose points carry (image from 1, row, column)."""
    out = []
    for p in points:
        values, curve = _point_values(p.get("customdata")), int(p.get("curve_number", -1))
        if len(values) == 3 and 0 <= curve < 2 * len(conditions):
            out.append((int(values[0]) - 1, int(values[1]), int(values[2]), conditions[curve // 2], curve % 2))
    return list(dict.fromkeys(out))


def _clicked_patch(custom) -> str | None:
    """The patch a click on the query overlay picked (its point's customdata (row, col)), or None."""
    values = _point_values(custom)
    try:
        r, c = (int(v) for v in values[:2])
    except (TypeError, ValueError):
        return None
    label = f"patch ({r}, {c})"
    return label if label in QUERY_OPTIONS else None


@st.fragment
def query_view() -> None:
    """Attention of a chosen query token (picked from the list or by clicking a patch on the image)."""
    pick = st.session_state.get("att_query_pick")
    points = (pick or {}).get("selection", {}).get("points", []) if pick else []
    clicked = _clicked_patch(points[0].get("customdata")) if points else None
    if clicked is not None:
        if clicked != st.session_state.get("_att_query_applied"):
            st.session_state["att_query"] = clicked
            st.session_state["_att_query_applied"] = clicked
    c = st.columns(3)
    label = c[0].selectbox("query token", QUERY_OPTIONS, key="att_query",
                           help="Or click a patch on the left image below.")
    block = block_slider(c[1], "block ", cmp.clean.layers, "att_q_layer", value=cmp.clean.layers)
    head_opts = ["mean of heads"] + [f"head {h + 1}" for h in range(cmp.clean.heads)]
    head = c[2].selectbox("head ", head_opts, key="att_q_head")
    patch = _query_patch(label)
    q = query_index(PREFIX, (GH, GW), patch)
    maps = [query_maps(t.attention, q, PREFIX, (GH, GW))[block - 1, 0] for t in (cmp.clean, cmp.noised)]
    mats = [t.attention[block - 1, 0] for t in (cmp.clean, cmp.noised)]  # [H, T, T]
    if head == head_opts[0]:
        maps, mats = [m.mean(0) for m in maps], [m.mean(0) for m in mats]
    else:
        h = int(head.split()[1]) - 1
        maps, mats = [m[h] for m in maps], [m[h] for m in mats]
    c = st.columns(2)
    view = fingerprint(CMP_KEY, label, block, head)  # the figures of one view, shared as the results they draw
    c[0].plotly_chart(shared_figure(figures.overlay, fingerprint(view, "pick"), img, maps[0].numpy(),
                                    f"{label} → patches, clean (click a patch)", marker=patch, pickable=True),
                      key="att_query_pick", on_select="rerun", selection_mode="points")
    c[1].plotly_chart(shared_figure(figures.map_triplet, fingerprint(view, "triplet"), maps[0].numpy(),
                                    maps[1].numpy(), "clean · noised · difference"), key="att_query_triplet")
    with st.expander(f"Full {TOKENS}×{TOKENS} attention matrix, block {block}, {head}"):
        st.plotly_chart(shared_figure(figures.attention_matrix, fingerprint(view, "matrix"), mats[0].numpy(), PREFIX,
                                      f"clean, block {block}, {head}", query=q), key="att_matrix")
        diff = (mats[1] - mats[0]).abs().max().item()
        st.caption(f"Noised − clean, largest entry: {diff:.1e} "
                   f"({figures.difference_label(diff, float(mats[0].max()))}). Row {q} is the query above.")


query_view()

st.subheader("Heads by depth")
stats, heads_figure = shared_result(lambda: (h := head_statistics(cmp.clean, cmp.noised, lm.patch_size),
                                              figures.head_statistics_plot(h)), fingerprint(CMP_KEY, "heads"))
st.plotly_chart(heads_figure, key="att_heads")
st.caption("Mean attention distance: for every patch query, the attention-weighted distance in pixels to the "
           "patches it attends to (weights renormalised over the patches), averaged over the queries — the ViT "
           "paper's measure of how far a head looks. Entropy: how spread each attention row is (0 = one token, "
           "log T = uniform). Filled: clean, open: noised.")

st.subheader("Exact vs approximate vs random noise, layer by layer")
exact_noise_shown = source == "fresh exact nullspace noise" or (source == "noise from the Nullspace page"
                                                                 and noise.kind == "exact")
if exact_noise_shown:
    noises = contrast_noises(delta)
else:
    ns_c = N.nullspace(lm)
    exact_noise = N.sample_noise(ns_c, lm.img_size, N.NoiseSpec(magnitude=1.0, seed=0))
    noises = contrast_noises(exact_noise, (delta, level),
                             kind="layernorm" if source == "noise from the Nullspace page" and noise.kind == "layernorm"
                             else "approximate")
# the noises are δ (in the comparison's key) and fixed exact and random noises: the same for every student
contrast, contrast_figure = shared_result(
    lambda: (c := noise_contrast(lm, x, noises, clean=cmp.clean), figures.noise_contrast_plot(c)),
    fingerprint(CMP_KEY, "contrast", exact_noise_shown, sorted(noises)))
st.plotly_chart(contrast_figure, key="att_contrast")
st.caption(contrast.describe()
           + ("" if len(noises) > 2 else " Synthesize an approximate δ on the Nullspace page to add it here."))

st.subheader("Over a set of images")
with st.form("att_set_form"):
    c = st.columns(3)
    own = model_own_data(lm.name)
    first = f"{own} (held-out split)" if own else f"the {len(SAMPLE_PHOTOS)} sample photographs"
    set_source = c[0].selectbox("images", [first, "upload a zip of an ImageFolder"], key="att_set_source",
                                help=None if own else f"{plain(lm.label)} has no images of its own here; upload a zip of "
                                "its kind of images for more than the sample photographs.")
    n_images = c[1].number_input("how many", 1, 1000, 64, key="att_set_n")
    batch = c[2].number_input("batch size", 1, 512, 64, key="att_set_batch")
    zip_up = upload_widget("ImageFolder zip (for the upload option)", "att_set_zip", ["zip"])
    run_set = st.form_submit_button("Compute statistics")
if run_set:
    try:
        if set_source.startswith("upload"):
            if zip_up is None:
                raise NullvizError("Choose a zip of an ImageFolder (one sub-folder of images per class) to upload.")
            settings = server_settings()
            check_upload_size(zip_up.name, zip_up.size, settings.max_upload_mb)
            with workspace().upload_folder(keep=False) as dest:  # read into tensors, then deleted
                folder = extract_image_folder_zip(zip_up.getvalue(), dest, max_bytes=workspace().unpack_budget(),
                                                  max_files=settings.max_zip_files)
                xs, _ = images_tensor(lm, image_folder(folder), limit=int(n_images))
        else:
            xs, _ = images_tensor(lm, held_out_or_sample_photos(lm.name), limit=int(n_images))
        bar = st.progress(0.0, text="tracing…")
        result = set_statistics(lm, xs, delta, level, batch_size=int(batch),
                                progress=lambda done, n: bar.progress(done / n, text=f"{done}/{n} images"))
        bar.empty()
        which = f"from {plain(zip_up.name)}" if set_source.startswith("upload") else set_source
        st.session_state["att_set"] = {"stats": result, "noise": source, "which": which,
                                       "inputs": fingerprint(model_key(lm), delta, level)}
    except NullvizError as exc:
        show_error(exc)
done = st.session_state.get("att_set")
if done and done["inputs"] == fingerprint(model_key(lm), delta, level):  # same model and noise, else gone
    r = done["stats"]
    st.markdown(f"**{r.images} images** ({done.get('which', '')}), noise: {done['noise']} · top-1 kept on **{r.top1_agreement:.1%}** of them.")
    c = st.columns(2)
    c[0].plotly_chart(figures.change_distribution(r.attention_tv, "attention change per block", "total variation"),
                      key="att_set_tv")
    c[1].plotly_chart(figures.change_distribution(r.repr_change, "representation change per block", "‖Δh‖/‖h‖"),
                      key="att_set_rc")
    st.plotly_chart(figures.map_triplet(r.mean_map_clean[-1], r.mean_map_noised[-1],
                                        f"mean {OUTPUT_QUERY} attention over the set, last block"), key="att_set_maps")
    st.plotly_chart(figures.head_statistics_plot(r.heads), key="att_set_heads")
    buf = io.BytesIO()
    np.savez_compressed(buf, **r.arrays())
    c = st.columns(2)
    c[0].download_button("set statistics (.npz)", buf.getvalue(), "attention_set.npz", "application/octet-stream",
                         on_click="ignore")
    c[1].download_button("set statistics (JSON)", json.dumps(r.to_dict(), indent=2), "attention_set.json",
                         "application/json", on_click="ignore")

st.subheader("Attribution")
c = st.columns(3)
method = c[0].selectbox("method", list(ATTRIBUTION_METHODS), key="att_method",
                        format_func=lambda name: ATTRIBUTION_METHODS[name].label)
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
        st.session_state["att_result"] = (method, a_clean, a_noised, INPUTS)
    except NullvizError as exc:
        show_error(exc)
stored = st.session_state.get("att_result")
if stored is not None and stored[3] != INPUTS:
    st.info("The last attributions were for another image, noise or model; press **Compute attributions** for "
            "these.")
elif stored is not None:
    m, a_clean, a_noised, _ = stored
    h_clean, h_noised = a_clean.heatmap()[0].numpy(), a_noised.heatmap()[0].numpy()
    c = st.columns(2)
    c[0].plotly_chart(figures.overlay(img, h_clean, f"{m}, clean, over the image", signed=True, opacity=0.6,
                                      units="attribution to the logit"), key="attr_over_c")
    c[1].plotly_chart(figures.overlay(img_noised, h_noised, f"{m}, noised, over the image", signed=True, opacity=0.6,
                                      units="attribution to the logit"), key="attr_over_n")
    with st.expander("Side by side, without the image"):
        st.plotly_chart(figures.attribution_pair(h_clean, h_noised, m), key="attr")
    if N.nullspace(lm).nullity:
        with st.expander("What the model can see of this map: its row-space and nullspace parts"):
            split = attribution_split(lm, a_clean)
            st.plotly_chart(figures.attribution_split_plot(split), key="attr_split")
            st.caption(f"The clean map, read as a covector of the model's input (as a gradient is), split patch by "
                       f"patch into the part the patch embedding can see and the part in its nullspace: "
                       f"{split.null_fraction:.1%} of it is in the nullspace"
                       + (" — float32 rounding: a gradient lies in the row space by construction."
                          if split.null_fraction < 1e-4 else " — structure the model cannot see: the map multiplies "
                          "the gradient by something else (the input, a mask)."))
    if exact_noise_shown:
        per_patch, per_pixel = map_change(a_clean, a_noised, lm.patch_size), map_change(a_clean, a_noised)

        def verdict(change: float) -> str:
            return "passes (float32 rounding)" if change < SANITY_TOLERANCE else "fails"

        why = (" Integrated Gradients multiplies the path gradient by (x − baseline): the noise changes x pixel by "
               "pixel, while in every patch the change sums to zero — the model reads patches."
               if per_pixel >= SANITY_TOLERANCE and per_patch < SANITY_TOLERANCE else
               " Score-CAM scores the input multiplied by upsampled activation masks: a mask that varies inside a "
               "patch takes the noise out of the nullspace, so the masked inputs — and the map — differ."
               if m == "scorecam" and per_patch >= SANITY_TOLERANCE else "")
        st.caption(f"**Nullspace sanity check.** Exact nullspace noise changes no output, so an explanation of the "
                   f"output must not change either. This map moved by {per_patch:.1e} of its largest value per "
                   f"patch (what the ViT reads): {verdict(per_patch)}; by {per_pixel:.1e} per pixel: "
                   f"{verdict(per_pixel)}.{why} (`nullviz attention --sanity` checks every method.)")
    if exact_noise_shown and st.button("Check every method against exact nullspace noise", key="att_sanity_all"):
        with st.spinner("every method, clean and under exact noise…"):
            try:
                st.session_state["att_sanity"] = (INPUTS, [nullspace_sanity(lm, lm.denormalize(x), name).to_dict()
                                                           for name in ATTRIBUTION_METHODS])
            except NullvizError as exc:
                show_error(exc)
    if a_clean.convergence_delta is not None:
        st.caption(f"Integrated Gradients completeness check (Σ attributions − (f(x) − f(0))): clean "
                   f"{a_clean.convergence_delta[0]:.3g}, noised {a_noised.convergence_delta[0]:.3g}; "
                   f"more steps shrink it.")

stored_sanity = st.session_state.get("att_sanity")
if exact_noise_shown and stored_sanity is not None and stored_sanity[0] == INPUTS:
    st.plotly_chart(figures.sanity_bars(stored_sanity[1], SANITY_TOLERANCE,
                                        {n: m.label for n, m in ATTRIBUTION_METHODS.items()}), key="att_sanity_bars")
    st.caption("The input gradient's share in the patch embedding's nullspace: "
               f"{stored_sanity[1][0]['gradient_null_fraction']:.1e} — any gradient lies in the row space, so a "
               "gradient map cannot see this noise; a map that still moves multiplies by the input (IG, per pixel) "
               "or masks it (Score-CAM).")

st.subheader("One head across many images")
st.caption("AttentionViz's view: the queries and keys of one head, for the patches of many images, in one 2-D "
           "embedding — clean, under exact nullspace noise, under the approximate δ when this page has one, and "
           "under random noise of the same norm as each. PCA is fit on the clean points and projects the others "
           "(positions compare across noises); t-SNE embeds all jointly (slower). Hover a point for its image and "
           "patch; select points (click, box or lasso) to see their image patches. A large set runs as a "
           "background job.")
with st.form("att_head_form"):
    c = st.columns(4)
    emb_block = c[0].number_input("block", 1, cmp.clean.layers, cmp.clean.layers, key="att_emb_block")
    emb_head = c[1].number_input("head", 1, cmp.clean.heads, 1, key="att_emb_head")
    emb_n = c[2].number_input("images", 1, 256, 16, key="att_emb_n")
    emb_method = c[3].selectbox("embedding", ["pca", "tsne"], key="att_emb_method",
                                format_func={"pca": "PCA", "tsne": "t-SNE"}.get)
    run_emb = st.form_submit_button("Embed queries and keys")
if run_emb:
    try:
        conditions = {"clean": None} | noises  # the contrast's noises: exact, δ, each one's random control
        n_emb = min(int(emb_n), len(held_out_or_sample_photos(lm.name)))
        if head_embedding_size(lm, n_emb, len(conditions), emb_method) > server_settings().eval_job_threshold:
            noise_file = save_conditions(conditions, workspace().new_upload_folder() / "conditions.pt")
            job = submit_job("head_embedding", head_embedding_params(
                ModelSpec.of(lm), noise_file, n_emb, int(emb_block), int(emb_head), emb_method),
                label=f"head embedding · block {int(emb_block)}, head {int(emb_head)} · {n_emb} images",
                threads=job_threads())
            st.session_state["att_emb_job"] = (INPUTS, job.id)
            st.session_state.pop("att_emb", None)
        else:
            ex, _ = images_tensor(lm, held_out_or_sample_photos(lm.name), limit=n_emb)
            bar = st.progress(0.0, text="tracing…")
            emb = head_embedding(lm, ex, conditions, int(emb_block), int(emb_head), emb_method,
                                 progress=lambda k, n: bar.progress(k / n, text=f"traced {k}/{n} images"))
            bar.empty()
            st.session_state["att_emb"] = (INPUTS, emb)
    except NullvizError as exc:
        show_error(exc)

follow_job_result("att_emb_job", "att_emb", "embedding.json", "Stop the embedding",
                  "The embedding was stopped before its first images.", parse=HeadEmbedding.from_dict)

stored_emb = st.session_state.get("att_emb")
if stored_emb is not None and stored_emb[0] == INPUTS:  # this model and noise, else gone
    emb = stored_emb[1]
    emb_labels = {"clean": "clean"} | {name: contrast_label(name) for name in emb.conditions[1:]}
    picked = st.plotly_chart(figures.head_embedding_plot(emb, emb_labels), key="att_emb_plot", on_select="rerun",
                             selection_mode=("points", "box", "lasso"))
    shift = emb.shift()
    st.caption(f"{emb.images} images" + (" (stopped early)" if emb.stopped else "") + ". Mean distance of each "
               "point from its clean position (embedding units): "
               + "; ".join(f"{emb_labels[c]} {shift[c]:.2e}" for c in emb.conditions[1:]) + ".")
    points = (picked or {}).get("selection", {}).get("points", []) if picked else []
    selected = _selected_tokens(points, emb.conditions)
    picks = selected[:18]
    if picks:
        try:
            images = sorted({i for i, *_ in picks})
            xs, _ = images_tensor(lm, held_out_or_sample_photos(lm.name), indices=images)
            shown = np.stack([lm.to_display(xs[images.index(i)]) for i, *_ in picks])
            st.plotly_chart(figures.patch_gallery(
                shown, [(k, r, c) for k, (_, r, c, _, _) in enumerate(picks)], lm.patch_size,
                [f"image {i + 1} · ({r}, {c})<br>{emb_labels[cond]} · {('query', 'key')[kind]}"
                 for i, r, c, cond, kind in picks]), key="att_emb_patches")
            more = f", the first {len(picks)} shown" if len(selected) > len(picks) else ""
            st.caption(f"{len(selected)} token(s) selected{more} — the clean image patch each one reads.")
        except NullvizError as exc:
            show_error(exc)
    st.download_button("queries and keys, 2-D (JSON)", json.dumps(emb.to_dict()), "head_embedding.json",
                       "application/json", on_click="ignore", key="dl_emb")

st.subheader("Beside another model")
st.caption("The same image and noise through a second model of the same shape — after finetuning, what changed "
           "inside? Model B gets the noise made for this model (exact here need not be exact there, if finetuning "
           "moved the patch embedding: its curve shows it).")
base_spec = ModelSpec(lm.name, None, str(lm.device)) if embedded_model(lm.name) is not None and lm.checkpoint else None
others = (["the embedded model it was finetuned from"] if base_spec else []) + ["a finetuned model of this session"
                                                                                if server_settings().shared else
                                                                                "a checkpoint"]
with st.form("att_other_form"):
    c = st.columns(2)
    other_kind = c[0].selectbox("model B", others, key="att_other_kind")
    if server_settings().shared:
        own = own_checkpoints()
        other_pick = c[1].selectbox("finetuned model", list(own) or ["(finetune a model first)"], key="att_other_pick")
        other_path = own.get(other_pick, "")
    else:
        other_path = c[1].text_input("checkpoint path", key="att_other_path",
                                     placeholder=st.session_state.get("last_finetuned_checkpoint")
                                     or "/path/model.safetensors")
    run_other = st.form_submit_button("Compare the two models")
if run_other:
    try:
        if other_kind == "the embedded model it was finetuned from":
            spec_b = base_spec
        else:
            path = other_path.strip() or st.session_state.get("last_finetuned_checkpoint") or ""
            if not path:
                raise NullvizError("Choose a checkpoint to compare with (finetune a model first on a shared server).")
            workspace().check_server_path(path, "the checkpoint")
            spec_b = ModelSpec(lm.name if embedded_model(lm.name) is not None else "default", path, str(lm.device))
        lm_b = cached_model(spec_b).view()
        both = compare_models(lm, lm_b, x, delta, level, fusion, float(discard))
        st.session_state["att_other"] = (INPUTS, both, list(lm_b.class_names))
    except NullvizError as exc:
        show_error(exc)
stored_other = st.session_state.get("att_other")
if stored_other is not None and stored_other[0] == INPUTS:  # the same image, noise and model A, else gone
    both, names_b = stored_other[1], stored_other[2]
    name_a, name_b = (figures.short_label(n) for n in both.names)
    st.plotly_chart(figures.depth_curve({
        "A vs B, clean: attention TV": both.between_attention.tolist(),
        "A vs B, clean: ‖h_B − h_A‖/‖h_A‖": both.between_repr[1:].tolist(),
        "A, clean vs noised: attention TV": both.a.layer_attention_distance.tolist(),
        "B, clean vs noised: attention TV": both.b.layer_attention_distance.tolist()},
        f"inside, per block — A: {name_a}, B: {name_b}", log_y=True), key="att_other_depth")
    ra, rb, diff = (m.numpy() for m in both.rollout_maps())
    c = st.columns(3)
    c[0].plotly_chart(figures.overlay(img, ra, "rollout, model A", units="rollout weight"), key="att_other_ra")
    c[1].plotly_chart(figures.overlay(img, rb, "rollout, model B", units="rollout weight"), key="att_other_rb")
    span = float(np.abs(diff).max()) or 1.0
    c[2].plotly_chart(figures.heatmap(diff, "rollout, B − A", colorscale=figures.DIVERGING, zmid=0.0, zmin=-span,
                                      colorbar_title="Δ rollout weight"), key="att_other_diff")
    da, db = both.a.to_dict(), both.b.to_dict()
    st.caption(f"Prediction clean / noised — A: {plain(lm.class_name(da['top1_clean']))} / {plain(lm.class_name(da['top1_noised']))}"
               f"; B: {names_b[db['top1_clean']]} / {names_b[db['top1_noised']]}.")
    st.download_button("both models, per block (JSON)", json.dumps(both.to_dict(), indent=2),
                       "two_models.json", "application/json", on_click="ignore", key="dl_other")

st.subheader("Which map to believe: faithfulness")
st.caption("Deletion: the patches a map ranks highest are blacked out first and the probability of the explained "
           "class is followed (a faithful map makes it fall fast: low area). Insertion: from a black image, its "
           "top patches are put back first (a faithful map makes it rise fast: high area). Every method of the "
           "list above and a random ranking, each image explained for its predicted class.")
with st.form("att_faith_form"):
    faith_methods = st.multiselect("methods", list(ATTRIBUTION_METHODS), [m for m in ATTRIBUTION_METHODS
                                                                          if m != "scorecam"],
                                   format_func=lambda name: ATTRIBUTION_METHODS[name].label, key="att_faith_methods")
    c = st.columns(2)
    own_f = model_own_data(lm.name)
    n_faith = c[0].number_input(f"images ({f'{own_f}, held-out split' if own_f else 'the sample photographs'})",
                                1, 256, 8, key="att_faith_n")
    faith_steps = c[1].number_input("steps along each curve", 2, 64, 16, key="att_faith_steps")
    faith_road = st.checkbox("also ROAD (pytorch-grad-cam's: removed pixels imputed from their neighbours, not "
                             "blacked out; 18 forward passes and sparse solves per map)", key="att_faith_road")
    run_faith = st.form_submit_button("Measure faithfulness")
if run_faith:
    try:
        dataset = held_out_or_sample_photos(lm.name)
        fx, _ = images_tensor(lm, dataset, limit=int(n_faith))
        bar = st.progress(0.0, text="explaining and perturbing…")
        if not faith_methods:
            raise NullvizError("Choose at least one method to measure.")
        faith = faithfulness(lm, lm.denormalize(fx), tuple(faith_methods), steps=int(faith_steps),
                             progress=lambda k, n: bar.progress(k / n, text=f"image {k}/{n}"),
                             with_road=bool(faith_road))
        bar.empty()
        st.session_state["att_faith"] = (model_key(lm), faith)
    except NullvizError as exc:
        show_error(exc)
stored_faith = st.session_state.get("att_faith")
if stored_faith is not None and stored_faith[0] == model_key(lm):  # measured on this model, else not shown
    faith = stored_faith[1]
    labels = {name: m.label for name, m in ATTRIBUTION_METHODS.items()} | {"random": "random ranking"}
    st.plotly_chart(figures.faithfulness_curves(faith, labels), key="att_faith_curves")
    summary = faith.summary()
    rand = summary["random"]
    table = {"method": [labels[m] for m in summary],
             "deletion AUC (lower is better)": [f"{v['deletion_auc']:.3f}" for v in summary.values()],
             "insertion AUC (higher is better)": [f"{v['insertion_auc']:.3f}" for v in summary.values()],
             "beats random on both": ["—" if m == "random" else
                                      ("yes" if v["deletion_auc"] < rand["deletion_auc"]
                                       and v["insertion_auc"] > rand["insertion_auc"] else "no")
                                      for m, v in summary.items()]}
    if faith.road:
        table["ROAD (higher is better)"] = [f"{v['road']:+.3f}" for v in summary.values()]
    st.table(table)
    st.caption(f"Over {faith.images} image(s)" + (" (stopped early)" if faith.stopped else "") + ", each explained "
               "for its predicted class.")
    st.download_button("faithfulness (JSON)", json.dumps(faith.to_dict(), indent=2), "faithfulness.json",
                       "application/json", on_click="ignore", key="dl_faith")

st.subheader("Download")


def _arrays_npz() -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **cmp.arrays())
    return buf.getvalue()


c = st.columns(3)
c[0].download_button("attention + rollouts (.npz)", _arrays_npz, "attention.npz", "application/octet-stream",
                     on_click="ignore")
c[1].download_button("per-layer numbers (JSON)", json.dumps(d, indent=2), "attention.json", "application/json",
                     on_click="ignore")
c[2].download_button("depth curve (HTML)", figure_html(figures.depth_curve(
    {"repr change": d["layer_repr_change"], "attention TV": d["layer_attention_distance"]})), "depth.html",
    "text/html", on_click="ignore")
st.caption("Every chart's toolbar (camera icon) saves it as PNG.")
