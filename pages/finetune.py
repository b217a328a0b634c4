"""Finetune: nullspace-augmented finetuning vs. its controls, live, stoppable, comparable."""

import io
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import streamlit as st

from app_state import current_model, require_shell, set_active_checkpoint, show_error
from nullviz import figures
from nullviz.data import extract_image_folder_zip, train_heldout
from nullviz.errors import NullvizError
from nullviz.finetune import METHODS, FinetuneConfig, FinetuneJob

require_shell(__file__)

RUNS_ROOT = Path(tempfile.gettempdir()) / "nullviz-runs"

lm = current_model()
st.title("Nullspace-augmented finetuning")
st.caption("Each run trains a copy of the active model; the model other pages use is never modified.")

with st.form("ft_form"):
    c = st.columns(4)
    methods = c[0].multiselect("methods", list(METHODS), default=["baseline", "nullspace", "gaussian"], key="ft_methods")
    epochs = c[1].number_input("epochs", 1, 1000, 3, key="ft_epochs")
    steps = c[2].number_input("steps per epoch (0 = full pass)", 0, 100_000, 0, key="ft_steps")
    batch = c[3].number_input("batch size", 1, 4096, 64, key="ft_batch")
    c = st.columns(4)
    lr = c[0].number_input("learning rate", 1e-7, 1.0, 1e-4, format="%.1e", key="ft_lr")
    freeze = c[1].selectbox("freeze", ["none", "patch_embed", "all_but_head"], key="ft_freeze")
    synth_steps = c[2].number_input("δ synthesis steps", 1, 5000, 50, key="ft_synth_steps")
    fgsm_eps = c[3].number_input("FGSM ε (/255)", 0.0, 255.0, 8.0, key="ft_eps")
    c = st.columns(3)
    source = c[0].selectbox("data", ["default digits", "ImageFolder path", "upload a zip of an ImageFolder", "CIFAR-10"],
                            key="ft_source")
    folder = c[1].text_input("ImageFolder path", key="ft_folder")
    upload = c[2].file_uploader("ImageFolder zip", type=["zip"], key="ft_zip")
    seed = st.number_input("seed", 0, 10_000, 0, key="ft_seed")
    start = st.form_submit_button("Start", type="primary")


def _datasets():
    if source == "default digits":
        return train_heldout("default", lm.transform)
    if source == "CIFAR-10":
        return train_heldout("cifar10", lm.transform, RUNS_ROOT / "data")
    if source == "ImageFolder path":
        return train_heldout(folder.strip(), lm.transform)
    if upload is None:
        raise NullvizError("Upload a .zip holding one folder of images per class.")
    dest = Path(tempfile.mkdtemp(prefix="nullviz-data-"))
    return train_heldout(str(extract_image_folder_zip(upload.getvalue(), dest)), lm.transform)


if start:
    old = st.session_state.get("ft_job")
    if old is not None:
        old.stop()  # never two runs of one session at once; the old one ends cleanly
    try:
        if not methods:
            raise NullvizError("Pick at least one method.")
        train, held = _datasets()
        configs = [FinetuneConfig(method=m, epochs=int(epochs), steps_per_epoch=int(steps) or None,
                                  batch_size=int(batch), lr=float(lr), freeze=freeze, synth_steps=int(synth_steps),
                                  fgsm_eps=float(fgsm_eps) / 255, seed=int(seed)) for m in methods]
        out = RUNS_ROOT / uuid.uuid4().hex[:12]
        st.session_state["ft_job"] = FinetuneJob(lm, train, held, configs, out).start()
        st.session_state["ft_out"] = str(out)
        st.session_state["ft_final_drawn"] = False
    except NullvizError as exc:
        show_error(exc)

job: FinetuneJob | None = st.session_state.get("ft_job")
if job is None:
    st.info("Pick methods and press **Start**. The defaults (3 epochs on the digits) take about 20 s per method on CPU.")
    st.stop()


def epoch_series(status) -> dict:
    """Per-run held-out accuracies by epoch, for the comparison curves."""
    return {m: {"epoch": [r["epoch"] for r in recs],
                **{k: [r.get(k) for r in recs] for k in ("clean_acc", "noise_acc", "gaussian_acc", "fgsm_acc")}}
            for m, recs in status.epoch_records.items()}


def draw(status) -> None:
    done, total = status.steps_done, max(status.steps_total, 1)
    eta = status.eta_seconds
    st.progress(min(done / total, 1.0), text=f"{status.state} · {status.current} · step {done}/{total}"
                + (f" · ETA {eta:.0f}s" if eta is not None and status.state == "running" else ""))
    if status.message:
        (st.error if status.state == "failed" else st.info)(status.message)
    steps = {m: {"step": [r["step"] for r in recs], "loss": [r["loss"] for r in recs],
                 "loss_clean": [r["loss_clean"] for r in recs], "loss_noise": [r["loss_noise"] for r in recs]}
             for m, recs in status.step_records.items()}
    c = st.columns(2)
    c[0].plotly_chart(figures.training_curves(steps, "step", ["loss"], "training loss (clean + noised part)", "loss"),
                      key=f"ft_loss_{done}")
    c[1].plotly_chart(figures.training_curves(epoch_series(status), "epoch", ["clean_acc", "fgsm_acc"], "held-out accuracy",
                                              "accuracy"), key=f"ft_acc_{done}")


running = job.alive


@st.fragment(run_every=1.0 if running else None)
def live():
    status = job.snapshot()
    if st.button("Stop", key="ft_stop", disabled=not job.alive):
        job.stop()
    draw(status)
    if not job.alive and not st.session_state.get("ft_final_drawn"):
        st.session_state["ft_final_drawn"] = True
        st.rerun()  # once finished, redraw the whole page with the final table and downloads


live()
if running:
    st.stop()

status = job.snapshot()
if not status.results:
    st.stop()
rows = {"method": [], "epochs": [], "clean": [], "under δ": [], "Gaussian, same norm": [], "FGSM": [], "‖δ‖": []}
for method, res in status.results.items():
    last = res.history[-1] if res.history else {}
    rows["method"].append(method + (" (stopped)" if res.stopped else ""))
    rows["epochs"].append(res.epochs_run)
    for col, key in (("clean", "clean_acc"), ("under δ", "noise_acc"), ("Gaussian, same norm", "gaussian_acc"),
                     ("FGSM", "fgsm_acc")):
        rows[col].append(f"{last[key]:.1%}" if key in last else "—")
    rows["‖δ‖"].append(f"{last['delta_l2']:.1f}" if "delta_l2" in last else "—")
st.subheader("Final numbers")
st.table(rows)
st.plotly_chart(figures.training_curves(epoch_series(status), "epoch", ["noise_acc", "gaussian_acc"],
                                        "held-out accuracy under δ and under Gaussian noise of δ's norm", "accuracy"),
                key="ft_noise_acc")

st.subheader("Download and use")
for method, res in status.results.items():
    if not res.checkpoint:
        continue
    run_dir = Path(res.checkpoint).parent
    c = st.columns(3)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in ("model.safetensors", "model.json"):
            zf.write(run_dir / name, name)
    c[0].download_button(f"{method}: checkpoint (.zip)", buf.getvalue(), f"{method}_checkpoint.zip", key=f"dl_ck_{method}")
    log = run_dir / "log.jsonl"
    c[1].download_button(f"{method}: run log (JSON lines)", log.read_bytes() if log.exists() else b"",
                         f"{method}_log.jsonl", key=f"dl_log_{method}")
    if c[2].button(f"Use the {method} model", key=f"use_{method}"):
        set_active_checkpoint(res.checkpoint, str(lm.device))
        st.session_state["last_finetuned_checkpoint"] = res.checkpoint
        st.success(f"The {method} model is now active on every page ({res.checkpoint}).")
        time.sleep(0.2)
        st.rerun()
