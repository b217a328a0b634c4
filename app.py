"""nullviz — entry point: navigation, session defaults and the model sidebar (pages are in pages/)."""

from pathlib import Path

import streamlit as st

# The tab's icon ships with the app (a Material-icon favicon is fetched from fonts.gstatic.com by every browser)
ICON = str(Path(__file__).resolve().parent / "assets" / "icon.png")
st.set_page_config(page_title="nullviz", page_icon=ICON, layout="wide")

with st.spinner("Loading PyTorch and timm (first start of the server only)…"):
    from app_state import follow_deep_link, init_session, model_sidebar, presentation_mode, presentation_shell

init_session()

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/model.py", title="Model", icon=":material/memory:"),
    st.Page("pages/nullspace.py", title="Nullspace", icon=":material/blur_on:"),
    st.Page("pages/attention.py", title="Attention", icon=":material/visibility:"),
    st.Page("pages/finetune.py", title="Finetune", icon=":material/model_training:"),
    st.Page("pages/robustness.py", title="Robustness", icon=":material/shield:"),
    st.Page("pages/learn.py", title="Learn", icon=":material/school:"),
]
nav = st.navigation(pages)
follow_deep_link()
if presentation_mode():
    presentation_shell()  # no sidebar: the model stays as chosen
else:
    model_sidebar()
nav.run()
