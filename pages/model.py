"""Model: architecture facts of the active model."""

import streamlit as st

from app_state import current_model, plain, require_shell, shown_checkpoint
from nullviz.data import digits_dataset
from nullviz.models import embedded_model
from nullviz.robustness.cluttered_report import measure as measure_cluttered
from nullviz.robustness.evaluation import accuracy

require_shell(__file__)

lm = current_model()
facts = lm.facts()
st.title("Model")
st.subheader(plain(facts["name"]) + (f" — {plain(shown_checkpoint(facts['checkpoint']))}" if facts["checkpoint"] else ""))

c = st.columns(4)
c[0].metric("Patch size", f"{facts['patch_size']}×{facts['patch_size']}")
c[1].metric("Width D", facts["embed_dim"])
c[2].metric("Depth", facts["depth"])
c[3].metric("Heads", facts["num_heads"])
c = st.columns(4)
c[0].metric("Parameters", f"{facts['num_params']:,}")
c[1].metric("Image size", "×".join(str(s) for s in facts["img_size"]))
c[2].metric("Device", facts["device"])
c[3].metric("Classes", facts["num_classes"])

k, d = facts["patch_input_dim"], facts["embed_dim"]
st.markdown(
    f"Each patch has 3·{facts['patch_size']}² = **{k}** numbers and becomes a token of **{d}** numbers, so "
    + (f"the patch embedding has a nullspace of dimension at least {k} − {d} = **{k - d}**."
       if k > d else "the nullspace is trivial unless W is rank-deficient: see the spectrum on the Nullspace page.")
)
st.table({"property": ["grid", "prefix tokens", "mean", "std", "interpolation"],
          "value": [f"{facts['grid_size'][0]}×{facts['grid_size'][1]} patches", str(facts["num_prefix_tokens"]),
                    ", ".join(f"{v:.3f}" for v in facts["mean"]), ", ".join(f"{v:.3f}" for v in facts["std"]),
                    str(lm.data_config.get("interpolation", ""))]})

# an embedded architecture (shipped weights, or a checkpoint finetuned from them) with its 10 classes
own = embedded_model(lm.name) if facts["num_classes"] == 10 else None
if own is not None and own.data == "digits":
    if st.button("Measure held-out accuracy (digits)"):
        held = digits_dataset("heldout")
        acc = accuracy(lm, held)
        st.success(f"Held-out top-1 accuracy: {acc:.2%} on {len(held)} images the model never trained on.")
elif own is not None:
    if st.button("Measure held-out accuracy and where attention falls (cluttered scenes)"):
        with st.spinner("1000 held-out scenes…"):
            m = measure_cluttered(lm)
        loc = m["localization"]
        st.success(f"Held-out top-1 accuracy: {m['heldout_accuracy']:.2%} on {m['heldout_images']} scenes "
                   f"(held-out digits on photographs training never used).")
        st.table({"attention": ["last block, CLS (mean of heads)", "rollout"],
                  "share inside the digit's box": [f"{loc[k]['mass_inside']:.1%}" for k in ("last_layer", "rollout")],
                  "box's share of the image": [f"{loc[k]['box_share']:.1%}" for k in ("last_layer", "rollout")],
                  "ratio (1 = spread evenly)": [f"{loc[k]['ratio']:.2f}×" for k in ("last_layer", "rollout")]})
if lm.info:
    with st.expander("How this embedded model was made"):
        st.json(lm.info)
