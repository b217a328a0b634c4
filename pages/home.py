"""Home: what nullviz is, in a few paragraphs and one live picture."""

import streamlit as st

from app_state import HOME_PICTURE_CSS, default_spec, home_picture, require_shell

require_shell(__file__)

st.title("nullviz — noise a Vision Transformer cannot see")

panels, report, model_name = home_picture(default_spec())
st.html(HOME_PICTURE_CSS)
with st.container(key="home_picture"):
    for column, (png_url, caption) in zip(st.columns(3), panels):
        column.image(png_url, caption=caption, width="stretch")
st.caption(
    f"The embedded {model_name}, and noise from its patch-embedding nullspace. "
    f"Prediction before: {report.top1_clean}, after: {report.top1_noised}; relative logit change "
    f"{report.rel_logit_change:.1e} (float32 rounding)."
)

st.markdown(
    """
A Vision Transformer cuts an image into p×p patches and maps each patch — 3·p² numbers — to a token of
D numbers with one matrix W. When 3·p² > D (ViT-Ti/16: 768 → 192), W has a **nullspace** N_θ: any noise v
with W v = 0, added to every patch, leaves every token, every attention map and every logit *exactly* as
they were. Beyond the linear patch embedding there is no exact nullspace, but noise can be **optimised** so
that the encoder barely reacts while the noise stays large — an *approximate* nullspace. Finetuning on such
noise makes the model more robust (Liu, Singh, Li, Wang, *Approximate Nullspace Augmented Finetuning for
Robust Vision Transformers*, 2024).

**Try it:** pick a model in the sidebar (the two embedded ViTs — digits on photographs with an 8×8 token
grid, and plain 32×32 digits — work offline), then
- **Model** — the architecture facts of the loaded model;
- **Nullspace** — sample exact or optimised noise for an image and verify that the output does not move;
- **Attention** — look inside: attention and token representations, clean vs. noised;
- **Finetune** — train a copy of the model on nullspace noise and on its controls, and compare them;
- **Robustness** — attacks, corruptions and noise-tolerance curves, for one model or two side by side;
- **Learn** — the idea step by step, from a 2×3 matrix to a ViT.
"""
)
