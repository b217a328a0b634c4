"""Learn: from a 2×3 matrix to a Vision Transformer, in four interactive steps (everything computed live).

One long page, or, in presentation mode (``?present=1``) or with ``?step=N``, one numbered step at a time with
Back / Next — a teacher can open step 4 directly: ``/learn?present=1&step=4``."""

import numpy as np
import streamlit as st

from app_state import (current_model, default_sample_for, fingerprint, model_key, plain, presentation_mode, require_shell,
                       set_presentation_mode, shared_result)
from nullviz import figures
from nullviz.data import sample_image, sample_image_names
from nullviz.noise import exact as N

require_shell(__file__)

PRESETS = {
    "rank 2 (a line of null vectors)": [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]],
    "rank 1 (a plane of null vectors)": [[1.0, 2.0, -1.0], [2.0, 4.0, -2.0]],
    "zero matrix (everything is null)": [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
}
TITLES = ["A small linear map", "The patch embedding is such a matrix", "One patch, then the whole image",
          "Beyond linear: the approximate nullspace"]

lm = current_model()
st.session_state["learn_big"] = presentation_mode()  # the toggle shows the mode (no widget default: no warning)
st.toggle("Presentation mode", key="learn_big",
          on_change=lambda: set_presentation_mode(st.session_state["learn_big"]),
          help="For projecting in class: larger text, figures and widgets, no sidebar, one step at a time "
               "(link: /learn?present=1&step=N).")
big = presentation_mode()
H = 560 if big else 380
ns = N.nullspace(lm)

st.title("Learn: the nullspace, from a matrix to a ViT")
st.caption("After Liu, Singh, Li & Wang, *Approximate Nullspace Augmented Finetuning for Robust Vision "
           "Transformers* (2024).")


MODEL = fingerprint(model_key(lm), str(lm.device))  # what the shared figures below are about


def basis_gallery(ns, height: int):
    patches = N.basis_patch_images(ns, 8)
    return figures.image_row(list(patches), [f"n{i + 1}" for i in range(len(patches))], height=height // 2)


def one_and_every_patch(lm, ns, img_name: str, index: int, magnitude: float, height: int):
    """Basis vector ``index`` added to the middle patch and to every patch of a sample image: the invariance
    check of each and the row of the three images."""
    xi = lm.preprocess(sample_image(img_name))
    gh, gw = lm.grid_size
    one = N.basis_vector_noise(ns, lm.img_size, index, patch=(gh // 2) * gw + gw // 2, magnitude=magnitude)
    every = N.basis_vector_noise(ns, lm.img_size, index, patch=None, magnitude=magnitude)
    rows = {label: N.verify_invariance(lm, xi, noise, ns) for label, noise in (("one patch", one), ("every patch", every))}
    figure = figures.image_row([lm.to_display(xi), lm.to_display(xi + one), lm.to_display(xi + every)],
                               ["image", "+ n in one patch", "+ n in every patch"], height=height)
    return rows, figure


def step_1() -> None:
    preset = st.selectbox("Matrix A (2×3)", [*PRESETS, "edit it yourself"], key="learn_preset")
    if preset == "edit it yourself":
        A = np.array(st.data_editor(np.array(PRESETS["rank 2 (a line of null vectors)"]), key="learn_matrix"),
                     dtype=float)
    else:
        A = np.array(PRESETS[preset])
        st.write(A)
    mn = N.matrix_nullspace(A)
    c = st.columns(4)
    x = np.array([c[i].slider(f"x{i + 1}", -2.0, 2.0, [1.0, 0.5, -0.5][i], 0.1, key=f"learn_x{i}") for i in range(3)])
    t = c[3].slider("null component t", -2.0, 2.0, 1.0, 0.1, key="learn_t")
    s = c[3].slider("non-null component s", -2.0, 2.0, 0.0, 0.1, key="learn_s")
    v = mn.basis[:, 0] * t if mn.nullity else np.zeros(3)
    row_dirs = np.linalg.svd(A)[2][: mn.rank]
    w = row_dirs[0] * s if mn.rank else np.zeros(3)
    left, right = st.columns([3, 2])
    left.plotly_chart(figures.linear_map_3d(mn.basis, x, v + w, height=H), key="learn_3d")
    with right:
        st.markdown(f"**A x** = {figures.readable(A @ x)}")
        st.markdown(f"**A (x + t·n)** = {figures.readable(A @ (x + v))}  — identical: n is in the nullspace")
        st.markdown(f"**A (x + t·n + s·r)** = {figures.readable(A @ (x + v + w))}"
                    + ("  — moved by the non-null part" if mn.rank and s else ""))
        st.markdown(f"Rank–nullity: rank **{mn.rank}** + nullity **{mn.nullity}** = **3** inputs. "
                    f"The nullspace is {['the point 0', 'a line', 'a plane', 'all of R³'][mn.nullity]}.")


def step_2() -> None:
    p, D = lm.patch_size, lm.embed_dim
    st.markdown(
        f"**{plain(lm.label)}** cuts the image into {p}×{p} patches. Each patch is 3·{p}² = **{ns.input_dim}** numbers, "
        f"mapped by one matrix W to a token of D = **{D}** numbers. W has {D} rows, so its rank is at most {D}; "
        f"rank–nullity leaves at least {ns.input_dim} − {D} = **{max(ns.input_dim - D, 0)}** null dimensions. "
        f"Measured: rank **{ns.rank}**, nullity **{ns.nullity}**."
    )
    # the model's own figures: the same for every student, made once per server
    st.plotly_chart(shared_result(figures.singular_spectrum, fingerprint(MODEL, "spectrum", H),
                                  ns.spectrum.singular_values.tolist(), ns.rank, ns.rtol, ns.input_dim, height=H),
                    key="learn_spectrum")
    st.plotly_chart(shared_result(basis_gallery, fingerprint(MODEL, "gallery", H), ns, H), key="learn_gallery")
    st.caption("An orthonormal basis of the nullspace, smoothest patterns first, shown as RGB patches (grey = 0). "
               "The patch embedding maps each of them to the zero token." if ns.nullity
               else "Full rank: these are the weakest directions, not null ones.")


def step_3() -> None:
    c = st.columns(3)
    names = sample_image_names()
    img_name = c[0].selectbox("image", names, index=names.index(default_sample_for(lm)),
                              key="learn_img")
    index = c[1].number_input("basis vector", 0, max(ns.nullity - 1, 0), 0, key="learn_index")
    magnitude = c[2].slider("magnitude", 0.0, 10.0, 3.0, 0.5, key="learn_mag")
    # the same for every student who picks the same image, vector and magnitude: computed once per server
    rows, row_figure = shared_result(one_and_every_patch, fingerprint(MODEL, "step3", img_name, int(index),
                                                                       float(magnitude), H),
                                     lm, ns, img_name, int(index), float(magnitude), H)
    st.plotly_chart(row_figure, key="learn_imgs")
    st.table({"noise": list(rows), "max |Δ token|": [f"{r.token_max_abs_change:.1e}" for r in rows.values()],
              "relative logit change": [f"{r.rel_logit_change:.1e}" for r in rows.values()],
              "prediction": [f"{lm.class_name(r.top1_clean)} → {lm.class_name(r.top1_noised)}" for r in rows.values()]})
    st.caption(N.describe_invariance(rows))  # from the numbers above it, whatever the model


def step_4() -> None:
    st.markdown(
        "After the patch embedding come attention and MLP blocks — nonlinear, so no exact nullspace. But we can "
        "*search* for one noise δ, shared by all images and added to the tokens, with "
        "E‖f(u + δ) − f(u)‖ ≤ ε while ‖δ‖ stays large: the ε-approximate nullspace Ñ_φ(ε). The paper finds δ by "
        "minimising L(δ) = E‖f(u + δ) − f(u)‖ − λ log‖δ‖. Training on inputs with such δ (clean and noised "
        "together) enlarges this approximate nullspace, and the model becomes more robust to adversarial and "
        "natural perturbations. A δ earns its name only if it stays invisible on images it was *not* fit on, and "
        "only if it does better than random noise of its size: the Nullspace page measures both."
    )
    c = st.columns(2)
    if c[0].button("Try it: a quick approximate run on the Nullspace page", key="learn_go"):
        st.session_state["ns_mode"] = "Approximate — encoder level"
        st.session_state["ns_steps"] = 100
        st.switch_page("pages/nullspace.py")
    if c[1].button("Train on it: nullspace vs. baseline on the Finetune page", key="learn_finetune"):
        st.session_state["ft_methods"] = ["baseline", "nullspace"]
        st.session_state["ft_epochs"] = 2
        st.switch_page("pages/finetune.py")


STEPS = [step_1, step_2, step_3, step_4]


def _current_step() -> int | None:
    """The step shown alone (1-based), from ``?step=N``; step 1 in presentation mode; None = the whole lesson."""
    raw = st.query_params.get("step")
    if raw is None:
        return 1 if big else None
    try:
        return min(max(int(raw), 1), len(STEPS))
    except ValueError:
        return 1


#: Streamlit keeps the scroll position across reruns: Back / Next would open the next step at the height the last
#: one was read to (its bottom). A fixed script, no user data in it.
SCROLL_TO_TOP = """<script>
(() => {
  const top = () => document.querySelector('[data-testid="stMain"]')?.scrollTo({top: 0});
  top();  // now, and again once the run has drawn the new step (the old step's height held the position)
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app) return;
  const done = new MutationObserver(() => {  // the step's figures size themselves after the run: once more then
    if (app.getAttribute('data-test-script-state') === 'notRunning') {
      done.disconnect();
      for (const ms of [0, 300, 1000]) setTimeout(top, ms);
    }
  });
  done.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
  setTimeout(() => done.disconnect(), 30000);
})();
</script>"""


def _go(step: int) -> None:
    st.query_params["step"] = str(step)


step = _current_step()
if step is None:
    for i, (title, fn) in enumerate(zip(TITLES, STEPS), start=1):
        st.header(f"{i} · {title}")
        fn()
else:
    if st.session_state.get("_learn_step_shown") != step:  # a new step opens at its top, not where the last ended
        st.session_state["_learn_step_shown"] = step
        # the step in the script: an element with the same content as the last run's is kept, not run again
        st.html(SCROLL_TO_TOP.replace("(() => {", f"(() => {{  // step {step}", 1), unsafe_allow_javascript=True)
    st.progress(step / len(STEPS), text=f"Step {step} of {len(STEPS)}")
    st.header(f"{step} · {TITLES[step - 1]}")
    STEPS[step - 1]()
    c = st.columns([1, 1, 4])
    c[0].button("← Back", key="learn_back", disabled=step == 1, on_click=_go, args=(step - 1,))
    c[1].button("Next →", key="learn_next", disabled=step == len(STEPS), on_click=_go, args=(step + 1,))
    c[2].caption(f"Link to this step: `/learn?{'present=1&' if big else ''}step={step}`")
