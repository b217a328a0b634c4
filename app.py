"""nullviz — entry point: navigation, session defaults and the model sidebar (pages are in pages/)."""

from pathlib import Path

import streamlit as st

# The tab's icon ships with the app (a Material-icon favicon is fetched from fonts.gstatic.com by every browser)
ICON = str(Path(__file__).resolve().parent / "assets" / "icon.png")
st.set_page_config(page_title="nullviz", page_icon=ICON, layout="wide")

with st.spinner("Loading PyTorch and timm (first start of the server only)…"):
    from app_state import (access_prompt, admit, follow_deep_link, init_session, model_sidebar, presentation_mode,
                           presentation_shell)

PAGES = [("home", "Home", ":material/home:"), ("model", "Model", ":material/memory:"),
         ("nullspace", "Nullspace", ":material/blur_on:"), ("attention", "Attention", ":material/visibility:"),
         ("finetune", "Finetune", ":material/model_training:"), ("robustness", "Robustness", ":material/shield:"),
         ("learn", "Learn", ":material/school:")]

if not admit():  # a shared server shows a session it has not let in the class-code prompt and nothing else:
    # the prompt stands at every page's address, so a deep link opens its page once the code is given
    st.navigation([st.Page(access_prompt, title=title, url_path=None if i == 0 else name, default=i == 0)
                   for i, (name, title, _) in enumerate(PAGES)], position="hidden").run()
    st.stop()

init_session()

pages = [st.Page(f"pages/{name}.py", title=title, icon=icon, default=i == 0)
         for i, (name, title, icon) in enumerate(PAGES)]
nav = st.navigation(pages)
follow_deep_link()
if presentation_mode():
    presentation_shell()  # no sidebar: the model stays as chosen
else:
    model_sidebar()
nav.run()
