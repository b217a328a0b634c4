"""Robustness: adversarial attacks, natural corruptions and noise tolerance, for one or two models."""

import json
from pathlib import Path

import numpy as np
import streamlit as st

from app_state import (cached_model, current_model, default_spec, follow_job, follow_job_result, job_queue, job_threads, model_key, plain,
                       own_checkpoints, require_shell, server_settings, show_error, submit_job, workspace)
from nullviz import figures
from nullviz.core.errors import NullvizError
from nullviz.data import (EMBEDDED_DATA, EMBEDDED_DATA_WORDS, extract_image_folder_zip, load_dataset, model_own_data,
                          no_own_data_message, own_data)
from nullviz.jobs.queue import evaluate_params, suite_params
from nullviz.models import ModelSpec, PixelModel, embedded_model
from nullviz.noise.kinds import label as noise_label
from nullviz.robustness import evaluation as R
from nullviz.data.scenes import SHIFTS
from nullviz.robustness.benchmarks import BENCHMARKS, evaluate_suite, suite_root, suite_size
from nullviz.server.settings import check_upload_size


require_shell(__file__)

lm_a = current_model()
shared, ws = server_settings().shared, workspace()
st.title("Robustness")
st.caption("Attacks act on [0, 1] pixels with the model's normalisation inside; ε in 1/255 pixel units.")

with st.form("rob_form"):
    c = st.columns(2)
    other = c[0].selectbox("Compare with", ["nothing", "the embedded default model", "a checkpoint"], key="rob_other")
    if shared:  # no server paths: one of this session's own finetuned models
        own = own_checkpoints()
        picked = c[1].selectbox("checkpoint (for 'a checkpoint')", list(own) or ["(finetune a model first)"],
                                key="rob_other_pick")
        other_path = own.get(picked, "")
    else:
        other_path = c[1].text_input("checkpoint path (for 'a checkpoint')", key="rob_other_path",
                                     placeholder=st.session_state.get("last_finetuned_checkpoint")
                                     or "/path/model.safetensors")
    c = st.columns(3)
    own = model_own_data(lm_a.name)
    own_words = f"the {EMBEDDED_DATA_WORDS[own]}' held-out split" if own else "none: it has no data of its own here"
    data_spec = "default" if shared else c[0].text_input(
        "data set", value="default" if own else "", key="rob_data", placeholder="/path/to/imagefolder",
        help=f"'default' = the model's own data ({own_words}); 'digits', 'cluttered', or an ImageFolder directory")
    if shared:
        c[0].caption(f"Data: {own_words} (server folders are off on this shared server).")
    if not own:
        c[0].caption(no_own_data_message(lm_a.name))
    limit = c[1].number_input("images (limit)", min_value=1, max_value=100_000, value=128, key="rob_limit")
    batch = c[2].number_input("batch size", min_value=1, max_value=4096, value=128, key="rob_batch")
    c = st.columns(4)
    attacks = c[0].multiselect("attacks", list(R.ATTACKS), default=["fgsm", "pgd"], key="rob_attacks",
                               format_func=lambda name: R.ATTACKS[name].label)
    eps255 = c[1].number_input("ε (/255)", min_value=0.0, max_value=255.0, value=8.0, key="rob_eps")
    steps = c[2].number_input("PGD steps", min_value=1, max_value=200, value=10, key="rob_steps")
    norm = c[3].selectbox("PGD norm", ["linf", "l2"], key="rob_norm")
    c = st.columns(2)
    auto255 = c[0].number_input("AutoAttack ε (/255, L∞)", min_value=0.1, max_value=255.0, value=4.0,
                                key="rob_auto_eps", help="RobustBench's ImageNet setting is 4/255. AutoAttack runs "
                                "APGD-CE, then APGD-T, FAB-T and Square on the images still right: slow on a robust "
                                "model.")
    cw_steps = c[1].number_input("CW-L2 steps", min_value=1, max_value=1000, value=50, key="rob_cw_steps")
    shifts = []
    if own == "cluttered":
        shifts = st.multiselect("distribution shifts (the held-out scenes re-rendered, each with one change)",
                                list(SHIFTS), default=[], key="rob_shifts", format_func=SHIFTS.get,
                                help="In the spirit of ImageNet-R / -Sketch: inverted scenes, outlines only, digit "
                                     "sizes outside the training range, saturated colours, unseen backgrounds. Each "
                                     "shifted scene is the same scene as a clean one.")
    c = st.columns(2)
    corruptions = c[0].multiselect("corruptions (ImageNet-C)", list(R.CORRUPTIONS),
                                   default=["gaussian_noise", "defocus_blur", "fog", "contrast"], key="rob_corr")
    severities = c[1].multiselect("severities", [1, 2, 3, 4, 5], default=[1, 3, 5], key="rob_sev")
    tol = st.text_input("tolerance curve noise sizes (L2, normalised units; empty = skip)", "0, 5, 10, 20, 40",
                        key="rob_tol")
    go = st.form_submit_button("Evaluate", type="primary")


def store_results(models, dataset, cfg, reports) -> None:
    """Keep a finished evaluation for display, with a few example images under each attack and corruption."""
    ex = R.examples(models[0], dataset, cfg, count=4)
    preds = {}
    for k, lm in enumerate(models):
        fn = PixelModel.of(lm)
        preds[f"{k + 1}. {reports[k].model}"] = {
            name: R.predict_pixels(fn, px.to(lm.device)).cpu().tolist() for name, px in ex.items() if name[0] != "_"}
    st.session_state["rob_results"] = {"reports": reports, "examples": ex, "preds": preds,
                                       "class_names": models[0].class_names, "model": model_key(models[0])}



def suite_panel() -> None:
    """The paper's Table 1 benchmarks from their published folders (local mode: a folder on the server; shared
    mode: a zip this session uploads), on the spot when small, else as a background job."""
    with st.expander("The paper's benchmarks (Table 1): ImageNet, -A, -R, -C, -V2, -Sketch, Stylized, DamageNet"):
        st.caption("Each benchmark is read from the folder layout its authors publish, under one root (README: The "
                   "paper's benchmarks); absent ones are skipped, nothing is downloaded. Needs a 1,000-class "
                   "ImageNet model. The attacks run on the validation images.")
        with st.form("rob_suite_form"):
            c = st.columns(2)
            if shared:
                upload = c[0].file_uploader("zip of a benchmark root (val/, imagenet-a/, …)", type=["zip"],
                                            key="rob_suite_zip")
                root_text = ""
            else:
                upload = None
                root_text = c[0].text_input("benchmark root folder", key="rob_suite_root",
                                            placeholder="/data/benchmarks (val/, imagenet-a/, imagenet-c/, …)")
            only = c[1].multiselect("benchmarks", list(BENCHMARKS), default=list(BENCHMARKS), key="rob_suite_only",
                                    format_func=lambda n: BENCHMARKS[n].label)
            c = st.columns(2)
            limit = c[0].number_input("images per benchmark (0 = all; a seeded random subset)", 0, 10_000_000, 500,
                                      key="rob_suite_limit")
            attacks = c[1].multiselect("attacks on the validation images", list(R.ATTACKS),
                                       default=["patchfool", "cw", "fgsm"], key="rob_suite_attacks",
                                       format_func=lambda name: R.ATTACKS[name].label)
            run = st.form_submit_button("Run the benchmarks")
        if run:
            try:
                if shared:
                    if upload is None:
                        raise NullvizError("Upload a zip of a benchmark root (its folders in the published layouts).")
                    settings = server_settings()
                    check_upload_size(upload.name, upload.size, settings.max_upload_mb)
                    with ws.upload_folder() as dest:  # refused (too large, not benchmarks): deleted at once
                        root = suite_root(extract_image_folder_zip(upload.getvalue(), dest, max_bytes=ws.unpack_budget(),
                                                                   max_files=settings.max_zip_files))
                else:
                    if not root_text.strip():
                        raise NullvizError("Type the folder that holds the benchmarks.")
                    root = ws.check_server_path(root_text.strip(), "the benchmark root")
                if int(lm_a.model.num_classes) != 1000:
                    raise NullvizError(f"{lm_a.label} predicts {lm_a.model.num_classes:,} classes; the benchmarks "
                                       "are scored against ImageNet's 1,000. Load an ImageNet ViT in the sidebar.")
                cfg = R.EvalConfig(attacks=tuple(attacks))
                lim = int(limit) or None
                size = suite_size(root, tuple(only), lim) + len(attacks) * (lim or 50_000)
                scale = max(1.0, sum(p.numel() for p in lm_a.model.parameters()) / 1e6)
                if size * scale > server_settings().eval_job_threshold:
                    job = submit_job("suite", suite_params(ModelSpec.of(lm_a), root, list(only), lim, list(attacks), cfg),
                                     label=f"Table 1 benchmarks · {len(only)} sets", threads=job_threads())
                    st.session_state["rob_suite_job"] = (model_key(lm_a), job.id)
                else:
                    bar = st.progress(0.0, text="classifying…")
                    report = evaluate_suite(lm_a, root, tuple(only), lim, tuple(attacks), cfg, cfg.batch_size,
                                            progress=lambda key, done, n: bar.progress(min(done / max(n, 1), 1.0),
                                                                                       text=f"{key}: {done}/{n}"))
                    bar.empty()
                    st.session_state["rob_suite"] = (model_key(lm_a), report.to_dict())
            except NullvizError as exc:
                show_error(exc)
        follow_job_result("rob_suite_job", "rob_suite", "suite.json", "Stop the benchmarks",
                          "The benchmarks were stopped before they finished.",
                          "Running as a background job: it goes on if you leave or reload this page.")
        done = st.session_state.get("rob_suite")
        if done is not None and done[0] == model_key(lm_a):
            d = done[1]
            cols = d["columns"]
            st.table({"benchmark": list(cols), "top-1 % (ImageNet-C: mCE, lower is better)": [f"{v:.2f}" for v in
                                                                                               cols.values()]})
            c_summary = d.get("imagenet_c") or {}
            notes = []
            if c_summary.get("relative_mce") is not None:
                notes.append(f"relative mCE {c_summary['relative_mce']:.2f}")
            if c_summary.get("missing"):
                notes.append(f"ImageNet-C incomplete ({len(c_summary['missing'])} of 75 corruption × severity "
                             "folders missing)")
            notes.append(f"the paper's average {d['paper_average']:.2f}" if d["paper_average"] is not None else
                         f"no paper's average: missing {', '.join(d['paper_average_missing'])}")
            st.caption("; ".join(notes) + ".")
            for reason in d["skipped"].values():
                st.caption(f"Skipped — {reason}.")
            st.download_button("benchmarks (JSON)", json.dumps(d, indent=2), "benchmarks.json", "application/json",
                               on_click="ignore", key="dl_suite")


suite_panel()

if go:
    try:
        models = [lm_a]
        if other == "the embedded default model":
            # the embedded model of the active model's architecture (a finetuned cluttered checkpoint is compared
            # with the cluttered model), else the server's default
            base = lm_a.name if embedded_model(lm_a.name) is not None else default_spec().name
            models.append(cached_model(ModelSpec(base, None, str(lm_a.device))))
        elif other == "a checkpoint":
            path = other_path.strip() or st.session_state.get("last_finetuned_checkpoint") or ""
            if not path:
                raise NullvizError("Choose a checkpoint to compare with (finetune a model first on a shared server).")
            ws.check_server_path(path, "the checkpoint")
            models.append(cached_model(ModelSpec("default", path, str(lm_a.device))))
        magnitudes = tuple(float(v) for v in tol.split(",") if v.strip())
        cfg = R.EvalConfig(attacks=tuple(attacks), eps=float(eps255) / 255, pgd_steps=int(steps),
                           pgd_alpha=max(float(eps255) / 255 / 4, 1e-6), pgd_norm=norm,
                           autoattack_eps=float(auto255) / 255, cw_steps=int(cw_steps), corruptions=tuple(corruptions),
                           shifts=tuple(shifts),
                           severities=tuple(sorted(severities)) or (3,), tolerance_magnitudes=magnitudes,
                           limit=int(limit), batch_size=int(batch))
        if not data_spec.strip():
            raise NullvizError("Type the path of an ImageFolder of the model's own classes (one folder per class).")
        data_name = own_data(data_spec.strip(), lm_a.name)
        if data_name not in EMBEDDED_DATA:
            data_name = str(ws.check_server_path(data_name, "the data set"))
        dataset = load_dataset(data_name, split="heldout")
        for m in models:  # before any job starts: a 1,000-class model is never scored on the 10 digits
            R.check_classes_match(m, dataset)
        params = [sum(p.numel() for p in m.model.parameters()) for m in models]
        if R.evaluation_size(len(dataset), cfg, params) > server_settings().eval_job_threshold:
            job = submit_job("evaluate", evaluate_params([ModelSpec.of(m) for m in models], data_name, cfg),
                             label=f"evaluate {len(models)} model(s) · {min(len(dataset), int(limit))} images",
                             threads=job_threads())
            st.session_state["rob_job"] = job.id
            st.session_state.pop("rob_results", None)
        else:
            reports, bar = [], st.progress(0.0, text="evaluating…")
            for k, lm in enumerate(models):

                def progress(stage, done, total, k=k):
                    overall = (k + cfg.fraction_done(stage, done, total)) / len(models)
                    bar.progress(overall, text=f"model {k + 1}/{len(models)} · {stage}: {done}/{total} · "
                                               f"{overall:.0%} of the evaluation")

                reports.append(R.evaluate(lm, dataset, cfg, progress=progress))
            bar.progress(1.0, text="done")
            store_results(models, dataset, cfg, reports)
    except ValueError as exc:
        show_error(NullvizError(f"Could not read the noise sizes: {exc}") if "float" in str(exc) else exc)
    except NullvizError as exc:
        show_error(exc)

job_id = st.session_state.get("rob_job")
if job_id:
    job = follow_job(job_id, "rob", "Stop evaluation",
                     "A large evaluation runs as a background job: it goes on if you leave or reload this page.")
    if job is None:
        st.session_state.pop("rob_job")
        st.rerun()
    if not job.finished:
        st.stop()
    st.session_state.pop("rob_job")
    path = job.dir / "reports.json"
    if job.state == "failed" or not path.exists():
        show_error(NullvizError(job.message or "The evaluation was stopped before it finished a model."))
        st.stop()
    try:
        reports = [R.RobustnessReport.from_dict(d) for d in json.loads(path.read_text())]
        models = [cached_model(ModelSpec.from_dict(m)) for m in job.params["models"][:len(reports)]]
        store_results(models, load_dataset(job.params["data"], split="heldout"),
                      R.config_from_dict(job.params["config"]), reports)
    except NullvizError as exc:
        show_error(exc)

res = st.session_state.get("rob_results")
if res and res.get("model") != model_key(lm_a):  # kept (switching back shows them), never shown for another model
    st.info(f"The last evaluation was of {plain(res['reports'][0].model)}, not the active model {plain(lm_a.label)}"
            + (f" from {plain(Path(lm_a.checkpoint).name)}" if lm_a.checkpoint else "") + ": evaluate again for it.")
    res = None
if not res:
    st.info("Choose the evaluations and press **Evaluate**. Defaults finish in seconds on CPU for the default model; "
            "large evaluations run as background jobs.")
    earlier = [j for j in job_queue().jobs(ws.id) if j.kind == "evaluate"]
    if earlier:  # a reload or a reopened tab: background evaluations are still here
        with st.expander(f"Background evaluations ({len(earlier)})", expanded=True):
            for j in earlier[:10]:
                c = st.columns([4, 1])
                c[0].write(f"{plain(j.label)} · **{j.state}**")
                if c[1].button("Show", key=f"rob_show_{j.id}", disabled=j.state in ("failed", "cancelled")):
                    st.session_state["rob_job"] = j.id
                    st.rerun()
    st.stop()

reports = res["reports"]
names = [f"{k + 1}. {r.model}" for k, r in enumerate(reports)]
cats = ["clean", *reports[0].attacks, *(["corruption mean"] if reports[0].corruptions else []),
        *(f"shift: {s}" for s in reports[0].shifts)]
series = {name: [r.clean_acc, *(r.attacks[a]["robust_acc"] for a in r.attacks),
                 *([r.mean_corruption_acc] if r.corruptions else []), *r.shifts.values()]
          for name, r in zip(names, reports)}
st.plotly_chart(figures.bar_chart(cats, series, "accuracy", "top-1 accuracy"), key="rob_bars")

# each attack named with its budget (ε, steps) as the evaluation used it: an accuracy means nothing without it
budgets = reports[0].attack_budgets
rows = {"evaluation": [f"{c} ({budgets[c]})" if c in budgets else c for c in cats]}
for name in names:
    rows[name] = [f"{v:.1%}" for v in series[name]]
if len(reports) == 2:
    rows["Δ (2 − 1)"] = [f"{b - a:+.1%}" for a, b in zip(series[names[0]], series[names[1]])]
    if reports[1].corruptions:
        rel = reports[1].relative_corruption_error(reports[0])
        st.caption("Relative corruption error of model 2 against model 1 (mCE-style: summed error over "
                   "severities ÷ model 1's, mean over corruptions; 100 = same, lower is better): " + rel.summary())
st.table(rows)

for k, (name, r) in enumerate(zip(names, reports)):
    if r.corruptions:
        st.plotly_chart(figures.labelled_heatmap(np.array(list(r.corruptions.values())), [f"s{s}" for s in r.severities],
                                                 list(r.corruptions), f"accuracy by corruption × severity — {name}",
                                                 colorbar_title="acc"), key=f"rob_heat_{k}")
    if r.corruption_skipped:
        st.warning("Could not apply: " + "; ".join(f"{c} ({why})" for c, why in r.corruption_skipped.items()))
    if r.tolerance_skipped:
        st.info("Tolerance curves skipped: " + "; ".join(f"{c} ({why})" for c, why in r.tolerance_skipped.items()))
if reports[0].tolerance:
    curves = {name: r.tolerance for name, r in zip(names, reports)}
    c = st.columns(2)
    st.caption("One noise pattern per kind, scaled to each L2 size: exact nullspace noise, an optimised input-level "
               "δ (approximate nullspace), Gaussian noise and δ's unoptimised random start U(−1, 1). Exact noise is "
               "invisible by construction.")
    kinds = {k for r in reports for k in r.tolerance}
    labels = {k: noise_label(k) for k in kinds}
    c[0].plotly_chart(figures.tolerance_plot(curves, "accuracy", labels=labels), key="rob_tol_acc")
    c[1].plotly_chart(figures.tolerance_plot(curves, "agreement", labels=labels), key="rob_tol_agree")

st.subheader("Examples")
st.caption("Adversarial examples are made against the first model; the second model's predictions show how they transfer.")
ex, preds, cls = res["examples"], res["preds"], res["class_names"]
labels = ex["_labels"].tolist()
for name, px in ex.items():
    if name.startswith("_"):
        continue
    titles = [f"y={cls[labels[i]]} · " + " / ".join(cls[p[name][i]] for p in preds.values()) for i in range(len(px))]
    st.markdown(f"**{name}** — label · prediction of " + " / ".join(preds))
    st.plotly_chart(figures.image_row([im.permute(1, 2, 0).numpy() for im in px], titles, height=200),
                    key=f"rob_ex_{name}")

st.subheader("Download")
c = st.columns(2)
c[0].download_button("results (CSV)", R.rows_to_csv([row for r in reports for row in r.to_rows()]),
                     "robustness.csv", "text/csv", on_click="ignore")
c[1].download_button("results (JSON)", R.report_json(reports), "robustness.json", "application/json",
                     on_click="ignore")
