"""Finetune: nullspace-augmented finetuning vs. its controls, as jobs that run in their own processes."""

import contextlib
import io
import json
import os
import time
import zipfile
from datetime import datetime

import streamlit as st
import torch

from app_state import (current_model, estimate_finetune_job, job_queue, job_threads, plain, require_shell, server_settings, set_active_checkpoint,
                       show_error, submit_job, upload_widget, workspace)
from nullviz import figures
from nullviz.core.errors import NullvizError
from nullviz.jobs.limits import check_job_minutes
from nullviz.core.presets import FINETUNE_PRESETS
from nullviz.core.seeds import MAX_SEED
from nullviz.data import DataSpec, check_augmentable, check_data_spec, extract_image_folder_zip, model_own_data, no_own_data_message
from nullviz.jobs.queue import LogFollower, finetune_params, run_names, thin
from nullviz.models import ModelSpec
from nullviz.server.settings import check_upload_size
from nullviz.train.comparison import compare_methods
from nullviz.train.config import AUGMENTATIONS
from nullviz.train.finetune import FinetuneConfig, check_head
from nullviz.train.logger import records_csv
from nullviz.train.methods import FINETUNE_METHODS

require_shell(__file__)

PROGRESS_EVERY_S = 5.0  # how often a running job's page reads its status
CHARTS_EVERY_S = 15.0  # … and redraws its curves
MAX_POINTS = 400  # points per curve, however long the run

settings, ws, queue = server_settings(), workspace(), job_queue()
lm = current_model()
st.title("Nullspace-augmented finetuning")
st.caption("Each run trains a copy of the active model in a process of its own; the model other pages use is "
           "never modified. Runs go on when you close the tab, and come back when you open this page again.")

OWN_DATA = model_own_data(lm.name)  # None: a model without training images of its own
#: The form's defaults: a run small enough to watch in class (≤ 2 minutes for three methods on a 2-core CPU,
#: ``bench/bench_demo.py``); researchers raise them.
SMALL_RUN = {"epochs": 2, "steps": 15, "synth_steps": 30, "fresh": 1, "eval": 256}
OWN_SOURCE = "cluttered digits (the model's own)" if OWN_DATA == "cluttered" else "default digits"
DATA_SOURCES = [*([OWN_SOURCE] if OWN_DATA else []), *([] if settings.shared else ["ImageFolder path"]),
                "upload a zip of an ImageFolder",
                "CIFAR-10"]
#: What each recipe sets in the form (the paper's: nullviz.core.presets; steps 0 = full passes over the data).
PAPER = FINETUNE_PRESETS["paper"]
RECIPES = {
    "small": ("a small run to watch in class", dict(ft_epochs=SMALL_RUN["epochs"], ft_steps=SMALL_RUN["steps"],
                                                    ft_lr=1e-4, ft_wd=1e-4, ft_augment="none", ft_keep_best=False,
                                                    ft_tol=0.01)),
    "paper": ("the paper's recipe (Liu et al. 2024, §4)", dict(ft_epochs=PAPER["epochs"], ft_steps=0, ft_lr=PAPER["lr"],
                                                               ft_wd=PAPER["weight_decay"], ft_augment=PAPER["augment"],
                                                               ft_keep_best=PAPER["keep_best"], ft_tol=PAPER["synth_tol"])),
}
for _key, _value in RECIPES["small"][1].items():  # the form's first values (widgets below take them from here)
    st.session_state.setdefault(_key, _value)


def _apply_recipe() -> None:
    st.session_state.update(RECIPES[st.session_state["ft_recipe"]][1])


st.radio("recipe", list(RECIPES), format_func=lambda r: RECIPES[r][0], key="ft_recipe", horizontal=True,
         on_change=_apply_recipe, help="Fills the form; change any value after. The paper's: AdamW lr 1e-4, weight "
         "decay 1e-4, cosine over all steps without warm-up, 10 full epochs, random resized crop + flip (natural "
         "images), the best held-out epoch kept, δ inside ε = 0.03.")
with st.form("ft_form"):
    c = st.columns(4)
    methods = c[0].multiselect("methods", list(FINETUNE_METHODS), default=["baseline", "nullspace", "gaussian"],
                               key="ft_methods", format_func=lambda name: FINETUNE_METHODS[name].label)
    epochs = c[1].number_input("epochs", 1, 1000, key="ft_epochs")
    steps = c[2].number_input("steps per epoch (0 = full pass)", 0, 100_000, key="ft_steps")
    batch = c[3].number_input("batch size", 1, 4096, 64, key="ft_batch")
    c = st.columns(4)
    lr = c[0].number_input("learning rate", 1e-7, 1.0, format="%.1e", key="ft_lr")
    weight_decay = c[1].number_input("weight decay", 0.0, 1.0, format="%.1e", key="ft_wd")
    augment = c[2].selectbox("augmentation", list(AUGMENTATIONS), key="ft_augment",
                             format_func={"none": "none", "rrc_flip": "random resized crop + flip (the paper's)",
                                          "timm": "timm's (crop, flip, colour jitter)"}.get,
                             help="For natural images (a folder, CIFAR-10); the embedded digits and scenes take none.")
    tol = c[3].number_input("ε of the training δ (Σ Δp²)", 1e-4, 1.0, format="%.3f", key="ft_tol")
    keep_best = st.checkbox("keep the best held-out epoch (else the last)", key="ft_keep_best",
                            help="The held-out split is a validation split of the training data (10 % of a folder): "
                                 "the kept model is judged on other images, e.g. the Robustness page's.")
    c = st.columns(3)
    freeze = c[0].selectbox("freeze", ["none", "patch_embed", "all_but_head"], key="ft_freeze")
    synth_steps = c[1].number_input("δ synthesis steps", 1, 5000, SMALL_RUN["synth_steps"], key="ft_synth_steps")
    fgsm_eps = c[2].number_input("FGSM ε (/255)", 0.0, 255.0, 8.0, key="ft_eps")
    c = st.columns(3)
    source = c[0].selectbox("data", DATA_SOURCES, key="ft_source")
    folder = "" if settings.shared else c[1].text_input("ImageFolder path", key="ft_folder")
    upload = upload_widget("ImageFolder zip", "ft_zip", ["zip"], container=c[2 if not settings.shared else 1])
    c = st.columns(4)
    on_gpu = lm.device.type == "cuda"
    most = max(1, torch.cuda.device_count()) if on_gpu else max(1, min(4, os.cpu_count() or 1))
    processes = c[3].number_input("processes (GPUs)" if on_gpu else "processes", 1, most, 1, key="ft_procs",
                                  help="More than one: each run is launched through torchrun with "
                                       "DistributedDataParallel, one process per GPU (gloo on CPU); the global "
                                       "batch is the batch size × processes.")
    seed = c[0].number_input("seed", 0, MAX_SEED, 0, key="ft_seed")
    n_seeds = c[2].number_input("seeds per method", 1, 10, 1, key="ft_seeds",
                                help="Each method runs with seeds seed, seed + 1, …; with 2 or more the comparison "
                                     "below shows 95 % intervals and paired differences.")
    fresh = c[1].number_input("fresh δs for the final evaluation", 0, 16, SMALL_RUN["fresh"], key="ft_fresh",
                              help="Accuracy under δ is measured with δs synthesized from the finished model, on "
                                   "training images, averaged over this many seeds (0: only the δ it trained on).")
    c = st.columns(2)
    eval_limit = c[0].number_input("held-out images evaluated each epoch (0 = all)", 0, 1_000_000, SMALL_RUN["eval"],
                                   key="ft_eval_limit", help="The first this many of the held-out split; every "
                                   "method is measured on the same ones.")
    eval_synth_steps = c[1].number_input("evaluation δ steps", 1, 5000, SMALL_RUN["synth_steps"], key="ft_eval_steps",
                                         help="Steps of the δs every run is measured with (fixed λ, ε and images: "
                                              "the same yardstick for every method, whatever it trained with).")
    new_head = st.checkbox("new classifier head for the data's classes", key="ft_new_head",
                           value=False, help=f"{plain(lm.label)} predicts {lm.model.num_classes:,} classes. Data with another "
                           "number of classes needs a new head (trained from a seeded start); without this box such a "
                           "run is refused.")
    c = st.columns([1, 1, 5])
    start = c[0].form_submit_button("Start", type="primary")
    estimate_only = c[1].form_submit_button("Estimate time", help="How long these settings take on this machine "
                                            "(one training step is timed), without starting anything.")
if not OWN_DATA:
    st.info(no_own_data_message(lm.name))


def _data_spec(scope: contextlib.ExitStack, keep: bool) -> str:
    """The job's data: the model's own ('digits' or 'cluttered'), 'cifar10', or a folder (typed in local mode,
    unpacked from a zip upload). An unpacked folder lives as long as ``scope``: deleted when anything in it
    refuses the data (a class count the head cannot take), and after it unless ``keep`` (an estimate only)."""
    if source == OWN_SOURCE:
        return OWN_DATA
    if source == "CIFAR-10":
        return "cifar10"
    if source == "ImageFolder path":
        if not folder.strip():
            raise NullvizError("Type the path of an ImageFolder (one sub-folder of images per class).")
        return str(ws.check_server_path(folder.strip(), "the data folder"))
    if upload is None:
        raise NullvizError("Upload a .zip holding one folder of images per class.")
    check_upload_size(upload.name, upload.size, settings.max_upload_mb)
    dest = scope.enter_context(ws.upload_folder(keep=keep))
    return str(extract_image_folder_zip(upload.getvalue(), dest, max_bytes=ws.unpack_budget(),
                                        max_files=settings.max_zip_files))


if start or estimate_only:
    try:
        with contextlib.ExitStack() as scope:  # an unpacked upload is kept only for a job that starts
            if not methods:
                raise NullvizError("Pick at least one method.")
            configs = [FinetuneConfig(method=m, epochs=int(epochs), steps_per_epoch=int(steps) or None,
                                      batch_size=int(batch), lr=float(lr), freeze=freeze, synth_steps=int(synth_steps),
                                      fgsm_eps=float(fgsm_eps) / 255, fresh_deltas=int(fresh), seed=int(seed) + k,
                                      eval_limit=int(eval_limit) or None, new_head=bool(new_head),
                                      eval_synth_steps=int(eval_synth_steps), weight_decay=float(weight_decay),
                                      augment=augment, keep_best=bool(keep_best), synth_tol=float(tol))
                       for m in methods for k in range(int(n_seeds))]
            data = check_data_spec(_data_spec(scope, keep=bool(start)))
            if augment != "none":
                check_augmentable(data)
            check_head(lm.name, lm.model.num_classes, DataSpec.parse(data).class_count(), bool(new_head))
            limit = settings.max_job_minutes if settings.shared else None
            st.session_state.pop("ft_estimate", None)  # about earlier settings
            if estimate_only or limit:  # Start times a step (and may read the data) only where a limit is checked
                estimate = estimate_finetune_job(lm, configs, data, int(processes))
                st.session_state["ft_estimate"] = (f"These settings: {estimate.describe()}." + (
                    f" This server runs jobs of at most {limit:g} minutes." if limit else ""))
                check_job_minutes(estimate.seconds, limit)
            if start:
                params = finetune_params(ModelSpec.of(lm), data,
                                         configs, data_cache=str(settings.datasets_cache), processes=int(processes))
                job = submit_job("finetune", params, label=" vs. ".join(methods) + f" · {int(epochs)} epochs"
                                 + (f" · {int(n_seeds)} seeds" if n_seeds > 1 else "")
                                 + (f" · {int(processes)} processes" if processes > 1 else ""), threads=job_threads())
                st.session_state["ft_job_pick"] = job.id  # the job list below shows the new job
    except NullvizError as exc:
        show_error(exc)

if st.session_state.get("ft_estimate"):
    st.caption(st.session_state["ft_estimate"])
jobs = [j for j in queue.jobs(ws.id) if j.kind == "finetune"]
if not jobs:
    st.info("Pick methods and press **Start**, or **Estimate time** to see first how long they take on this "
            f"machine. The defaults are a small run to see the method work: {SMALL_RUN['epochs']} epochs of "
            f"{SMALL_RUN['steps']} steps, δ synthesized in {SMALL_RUN['synth_steps']} steps, measured on "
            f"{SMALL_RUN['eval']} held-out images. Set steps per epoch to 0 for full passes over the training set.")
    st.stop()

# ----------------------------------------------------------------------------------------------- job list
st.subheader("Your jobs" if settings.shared else "Jobs on this server")
labels = {j.id: f"{datetime.fromtimestamp(j.submitted):%H:%M:%S} · {j.label}" + (f" · {j.state}" if j.finished else "")
          for j in jobs}  # a running job's state moves on: the live part below shows it
ids = [j.id for j in jobs]
if st.session_state.get("ft_job_pick") not in ids:  # first visit, or the picked job is gone: the newest
    st.session_state["ft_job_pick"] = ids[0]
job_id = st.selectbox("job", ids, format_func=labels.get, key="ft_job_pick")


def _follow(job) -> dict:
    """New log lines of the job's runs, appended to this session's copy (reads only what is new)."""
    cache = st.session_state.setdefault("ft_follow", {})
    if cache.get("job") != job.id:
        cache.clear()
        cache.update(job=job.id, follower=LogFollower(), steps={}, epochs={})
    for m in run_names(job.params.get("configs", [])):
        for rec in cache["follower"].read(job.dir / m / "log.jsonl"):
            (cache["steps"] if rec.get("kind") == "step" else cache["epochs"]).setdefault(m, []).append(rec)
    return cache


def _epoch_series(epochs: dict) -> dict:
    return {m: {"epoch": [r["epoch"] for r in recs],
                **{k: [r.get(k) for r in recs] for k in ("clean_acc", "delta_acc", "train_delta_acc", "start_delta_acc",
                                                         "gaussian_acc", "fgsm_acc")}}
            for m, recs in epochs.items()}


def _draw_progress(job) -> None:
    done, total = job.steps_done, max(job.steps_total, 1)
    line = job.describe(queue.position(job))  # true now: a finished job says how far it got, not its last stage
    if job.state == "queued":
        line += f": {settings.max_running_jobs} job(s) run at once"
    elif job.state == "running" and not job.stop_requested:
        line += " (δ synthesis, training and evaluation all counted)"
    st.progress(min(done / total, 1.0), text=line)
    if job.message:
        (st.error if job.state == "failed" else st.info)(job.message)


def _draw_charts(cache) -> None:
    steps = {m: {"step": [r["step"] for r in recs], "loss": [r["loss"] for r in recs]}
             for m, recs in ((m, thin(v, MAX_POINTS)) for m, v in cache["steps"].items())}
    smoothing = float(st.session_state.get("ft_smoothing", 0.6))
    best = st.session_state.get("ft_best", True)
    bands = st.session_state.get("ft_bands", True)
    c = st.columns(2)
    if steps:
        c[0].plotly_chart(figures.training_curves(steps, "step", ["loss"], "training loss (clean + noised part)", "loss",
                                                  smoothing=smoothing, log_y=bool(st.session_state.get("ft_log_loss")),
                                                  best="min" if best else None, bands=bands), key="ft_loss")
    else:
        c[0].caption(f"The training loss appears here once steps are logged (the curves refresh every "
                     f"{CHARTS_EVERY_S:.0f} s while the job runs).")
    if cache["epochs"]:
        c[1].plotly_chart(figures.training_curves(_epoch_series(cache["epochs"]), "epoch", ["clean_acc", "fgsm_acc"],
                                                  "held-out accuracy", "accuracy", best="max" if best else None,
                                                  bands=bands),
                          key="ft_acc")
    else:
        c[1].caption("Held-out accuracy appears here after the first epoch.")
    if cache["steps"] or cache["epochs"]:
        runs = {m: cache["steps"].get(m, []) + cache["epochs"].get(m, [])
                for m in dict.fromkeys([*cache["steps"], *cache["epochs"]])}
        st.download_button("every run's curves (CSV)", records_csv(runs), "curves.csv", "text/csv",
                           on_click="ignore", key="dl_curves")


job = next(j for j in jobs if j.id == job_id)


# Two fragments, so that watching costs the run (on the same machine) almost nothing: the status line is
# cheap and moves every PROGRESS_EVERY_S; the charts every CHARTS_EVERY_S (a plotly redraw costs headless
# Chromium ~0.3 CPU-s per chart, measured, even for an unchanged figure; on one machine the browser shares
# the cores with the job).
@st.fragment(run_every=None if job.finished else PROGRESS_EVERY_S)
def live_progress() -> None:
    job = queue.get(job_id, ws.id)
    states = [j.state for j in queue.jobs()]  # one look at every owner's jobs for both counts
    st.caption(f"{states.count('running')} running, {states.count('queued')} waiting · at most "
               f"{settings.max_running_jobs} run at once; the others wait in line.")
    if st.button("Stop", key="ft_stop", disabled=job.finished):
        job = queue.stop(job.id, ws.id)
    _draw_progress(job)
    if job.finished and not st.session_state.get(f"ft_final_{job.id}"):
        st.session_state[f"ft_final_{job.id}"] = True
        st.rerun()  # once finished, redraw the whole page with the final table and downloads


@st.fragment(run_every=None if job.finished else CHARTS_EVERY_S)
def live_charts() -> None:
    _draw_charts(_follow(queue.get(job_id, ws.id)))


c = st.columns([2, 1, 1, 1])
c[0].slider("smoothing of the loss curve", 0.0, 0.99, 0.6, 0.01, key="ft_smoothing",
            help="TensorBoard's exponential moving average (0: the raw values); the raw curve stays, faint.")
c[1].checkbox("log-scale loss", key="ft_log_loss")
c[2].checkbox("star the best values", value=True, key="ft_best")
c[3].checkbox("seeds as a band", value=True, key="ft_bands",
              help="A method run with several seeds: one line (their mean) over a band from the lowest to the "
                   "highest seed. Off: one line per seed.")
live_progress()
live_charts()
if not job.finished:
    st.stop()

results = job.results
if not results:
    st.stop()
cache = _follow(job)
rows = {"method": [], "epochs": [], "weights kept": [], "clean": [], "under fresh δ": [], "nullspace size": [],
        "under the start's δ": [], "Gaussian, 1 token norm": [], "FGSM": [], "under its training δ": [], "‖δ‖": []}
for method, res in results.items():
    last = res.final
    rows["method"].append(method + (" (stopped)" if res.stopped else ""))
    rows["epochs"].append(res.epochs_run)
    rows["weights kept"].append(f"epoch {res.best_epoch} (best held-out)" if res.best_epoch else "last epoch")
    for col, key in (("clean", "clean_acc"), ("under fresh δ", "delta_acc"), ("under the start's δ", "start_delta_acc"),
                     ("Gaussian, 1 token norm", "gaussian_acc"), ("FGSM", "fgsm_acc"),
                     ("under its training δ", "train_delta_acc")):
        rows[col].append(f"{last[key]:.1%}" if key in last else "—")
    rows["nullspace size"].append(f"{last['nullspace_size']:.2f}" if "nullspace_size" in last else "—")
    rows["‖δ‖"].append(f"{last['delta_l2']:.1f}" if "delta_l2" in last else "—")
st.subheader("Final numbers")
st.table(rows)
st.caption("All on held-out images, every run measured with the same yardstick (the same δ settings, images and "
           "noises, whatever it trained with). **Under fresh δ**: mean over δs synthesized from the finished model "
           "on training images at fixed settings, each kept as the largest δ inside ε on other training images. "
           "**Nullspace size**: that δ's norm in units of the starting model's mean patch-token norm — larger is "
           "a larger approximate nullspace. **Under the start's δ**: the δ of the model before finetuning. "
           "**Gaussian**: noise of one token norm, the same for every run. **Under its training δ**: the δ the last "
           "epoch trained on, fit to an earlier model; shown apart, it reads optimistic. The numbers are the last "
           "epoch's; **weights kept** says which epoch's weights the run's model (and *Use this model*) holds — the "
           "best held-out epoch was chosen on this same held-out split, so judge it on other images.")
if cache["epochs"]:
    st.plotly_chart(figures.training_curves(_epoch_series(cache["epochs"]), "epoch",
                                            ["train_delta_acc", "delta_acc", "start_delta_acc", "gaussian_acc"],
                                            "held-out accuracy under noise: the epoch's training δ, fresh δs (after "
                                            "the last epoch), the start's δ and Gaussian noise of one token norm",
                                            "accuracy", bands=bool(st.session_state.get("ft_bands", True))),
                    key="ft_noise_acc")

COMPARED = {"clean_acc": "clean", "delta_acc": "under fresh δ", "start_delta_acc": "under the start's δ",
            "gaussian_acc": "Gaussian, 1 token norm", "fgsm_acc": "FGSM"}
by_method: dict = {}
for res in results.values():
    if res.final:
        by_method.setdefault(res.method, {})[res.config.seed] = {k: res.final.get(k) for k in COMPARED}
if len(by_method) >= 2:
    st.subheader("Comparison")
    anchor = "nullspace" if "nullspace" in by_method else next(iter(by_method))
    comparison = compare_methods(by_method, [k for k in COMPARED if any(
        r.get(k) is not None for runs in by_method.values() for r in runs.values())], anchor)
    scale = {k: 100 for k in COMPARED}
    st.plotly_chart(figures.method_bars(comparison, labels=COMPARED, scale=scale), key="ft_compare")
    if min(len(v) for v in by_method.values()) >= 2:
        st.plotly_chart(figures.paired_difference_bars(comparison, labels=COMPARED, scale=scale), key="ft_paired")
        st.caption(f"{anchor} minus each other method, paired by seed: an interval that crosses 0 is no evidence "
                   "either way.")
    else:
        st.caption("One seed per method: no intervals. Run 2 or more seeds per method to see how much of a "
                   "difference is the seed's.")
    st.download_button("comparison (JSON)", json.dumps(comparison.to_dict(), indent=2, default=float),
                       "comparison.json", "application/json", key=f"dl_cmp_{job.id}", on_click="ignore")

st.subheader("Download and use")
for method, res in results.items():
    run_dir = job.dir / method
    c = st.columns(3)
    log = run_dir / "log.jsonl"
    c[1].download_button(f"{method}: run log (JSON lines)", log.read_bytes() if log.exists() else b"",
                         f"{method}_log.jsonl", key=f"dl_log_{job.id}_{method}", on_click="ignore")
    if not res.usable:
        c[0].caption(f"{method}: stopped before its first epoch ended; there is no trained model to use.")
        continue
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in ("model.safetensors", "model.json"):
            zf.write(run_dir / name, name)
    c[0].download_button(f"{method}: checkpoint (.zip)", buf.getvalue(), f"{method}_checkpoint.zip",
                         key=f"dl_ck_{job.id}_{method}", on_click="ignore")
    if c[2].button(f"Use the {method} model", key=f"use_{job.id}_{method}"):
        try:
            set_active_checkpoint(res.checkpoint, str(lm.device))
        except NullvizError as exc:
            show_error(exc)
            st.stop()
        st.session_state["last_finetuned_checkpoint"] = res.checkpoint
        st.success(f"The {method} model is now active on every page.")
        time.sleep(0.2)
        st.rerun()
