"""Every page under Streamlit's AppTest (a headless script run, no browser)."""

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import ROOT, imagenet_like_checkpoint, shown, wait_until
from nullviz.data import SAMPLE_PHOTOS, sample_image
from nullviz.models import ModelSpec, load_model
from nullviz.noise.approximate import default_synthesis_config

TIMEOUT = 120


def app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


def downloads(at) -> list:
    """The page's download buttons; a download never reruns the page (``on_click="ignore"``): the results it
    offers stay on screen and a long page is not recomputed for a file the browser already has."""
    buttons = at.get("download_button")
    assert all(b.proto.ignore_rerun for b in buttons), [b.proto.label for b in buttons if not b.proto.ignore_rerun]
    return buttons


def png_bytes(size=(48, 40), color=(120, 30, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def load_button(at):
    return [b for b in at.button if b.label == "Load model"][0]


def metric(at, label):
    for m in at.metric:
        if m.label == label:
            return m
    raise AssertionError(f"no metric {label!r}: {[m.label for m in at.metric]}")


def test_home():
    at = app()
    assert "nullviz" in at.title[0].value
    # the live picture as three captioned images (drawn without Plotly): the image, the noise, their sum
    images = at.get("image")
    assert [i.proto.imgs[0].caption.split(" ×")[0] for i in images] == ["original", "noise", "original + noise"]
    # lossless PNGs inside the page (no request, no JPEG)
    assert all(i.proto.imgs[0].url.startswith("data:image/png;base64,") for i in images) and not at.get("plotly_chart")
    assert "relative logit change" in at.main.caption[-1].value


def test_model_page_facts_and_accuracy():
    at = app("pages/model.py")
    assert metric(at, "Patch size").value == "8×8"
    assert metric(at, "Width D").value == "96"
    assert metric(at, "Parameters").value == "320,554"
    [b for b in at.button if "held-out" in b.label][0].click().run()
    assert "Held-out top-1 accuracy" in at.success[0].value


# AppTest (streamlit 1.67) drops sidebar elements from its tree on reruns of an st.navigation app, so the
# sidebar form's submit is exercised in the real browser (test_e2e_browser.py); here the model choice is set
# in session state before the first run, as the form would leave it.
def app_with_spec(spec: dict) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["model_spec"] = spec
    return at.run()


def test_sidebar_form_is_rendered():
    at = app()
    assert at.radio(key="model_source").value.startswith("Embedded model")
    assert at.selectbox(key="model_embedded").value == "digits"  # the tests' default (conftest)
    assert {w.key for w in at.text_input} >= {"model_name", "model_checkpoint"}
    assert at.selectbox(key="model_device").value == "auto"
    assert load_button(at) is not None
    assert "nullviz_digits_vit" in shown(at.sidebar.caption[-1].value)


def test_sidebar_offers_common_vits_with_their_nullity():
    """(Picking one and loading it runs in Chromium: AppTest drops the sidebar after a sidebar form submit.)"""
    at = app()
    options = at.selectbox(key="model_pick").options
    assert options[0] == "type a name below"
    assert "vit_small_patch16_224 — 768→384, nullity ≥ 384" in [o.replace(" · cached", "") for o in options]
    assert any(o.startswith("vit_base_patch32_224 — 3072→768, nullity ≥ 2304") for o in options)


def test_unloadable_model_falls_back_to_default_with_one_line():
    at = app_with_spec(ModelSpec("resnet50", None, "auto"))
    assert not at.exception
    assert "not a plain Vision Transformer" in at.sidebar.error[0].value
    assert at.session_state["model_spec"].name == "digits"  # the server default (conftest)
    assert "nullviz_digits_vit" in shown(at.sidebar.caption[-1].value)


def test_local_checkpoint_becomes_the_active_model(tmp_path, default_lm):
    from safetensors.torch import save_file

    path = tmp_path / "ft.safetensors"
    save_file(default_lm.model.state_dict(), str(path))
    at = app_with_spec(ModelSpec("default", str(path), "cpu"))
    assert not at.exception and not at.sidebar.error
    assert str(path) in shown(at.sidebar.caption[-1].value)
    at.switch_page("pages/model.py").run()
    assert str(path) in shown(at.subheader[0].value)


def test_missing_checkpoint_message():
    at = app_with_spec(ModelSpec("default", "/nonexistent/model.pth", "cpu"))
    assert not at.exception and "does not exist" in at.sidebar.error[0].value


def test_nullspace_upload_exact_noise_verified():
    at = app("pages/nullspace.py")
    at.file_uploader[0].upload("photo.png", png_bytes(), "image/png")
    at.run()
    at.button[0].click().run()  # "Make noise" (exact is the default)
    assert not at.exception and not at.error
    assert float(metric(at, "relative logit change").value) < 1e-5
    assert metric(at, "top-1 kept").value == "yes"
    assert "after clip + 8-bit PNG" in [m.label for m in at.metric]
    assert len(downloads(at)) == 4
    assert at.session_state["current_noise"].kind == "exact"


def test_nullspace_layernorm_noise_is_verified_and_carried_to_the_attention_page():
    at = app("pages/nullspace.py")
    at.radio(key="ns_mode").set_value("Exact — LayerNorm directions").run()
    at.number_input(key="ns_ln_magnitude").set_value(4.0)
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert float(metric(at, "relative logit change").value) < 1e-5
    assert metric(at, "top-1 kept").value == "yes"
    captions = " ".join(c.value for c in at.main.caption)
    share = float(re.search(r"the part a LayerNorm keeps: ([0-9.e+-]+)", captions).group(1))
    assert share < 1e-6 and "‖W W⁺1 − 1‖/‖1‖" in captions
    noise = at.session_state["current_noise"]
    assert noise.kind == "layernorm" and noise.level == "input" and noise.delta.norm() > 10
    # the Attention page contrasts it under its own name, and says what it does to the residual stream
    att = at.switch_page("pages/attention.py").run()
    assert not att.exception
    assert att.radio(key="att_source").value == "noise from the Nullspace page"
    assert "exact LayerNorm noise (input level)" in " ".join(c.value for c in att.main.caption)
    assert "LayerNorm noise moves the residual stream" in " ".join(c.value for c in att.main.caption)


def test_nullspace_bad_upload_is_one_clear_message():
    at = app("pages/nullspace.py")
    at.file_uploader[0].upload("notes.txt", b"hello, not an image", "text/plain")
    at.run()
    assert not at.exception
    assert "not an image" in at.error[0].value and "sample image instead" in at.error[0].value


@pytest.mark.slow
def test_nullspace_feasible_and_approximate_runs():
    at = app("pages/nullspace.py")
    at.radio(key="ns_mode").set_value("Exact, valid image (feasible)").run()
    at.button[0].click().run()
    assert not at.exception and "feasible variant kept" in at.main.caption[0].value
    at.radio(key="ns_mode").set_value("Approximate — encoder level").run()
    at.number_input(key="ns_steps").set_value(15)
    at.number_input(key="ns_batch").set_value(16)
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert int(metric(at, "steps").value) <= 15
    assert "permuted δ" in metric(at, "mean Σ Δp²").delta and "ε" in metric(at, "mean Σ Δp² (ε)").delta
    assert at.session_state["current_noise"].level == "encoder"
    # the image δ's tokens are about is shown (the encoder level showed no image at all)
    shown_image = _figure(at, "encoder_image")
    assert at.selectbox(key="ns_sample").value in shown_image["layout"]["annotations"][0]["text"]


def test_a_feasible_variants_numbers_stay_with_its_image():
    """The feasible variant is fitted to one image's pixel range: after picking another image, the caption says
    so instead of the first image's kept fraction."""
    at = app("pages/nullspace.py")
    at.radio(key="ns_mode").set_value("Exact, valid image (feasible)").run()
    at.button[0].click().run()
    first = at.selectbox(key="ns_sample").value
    assert "feasible variant kept" in at.main.caption[0].value
    at.selectbox(key="ns_sample").set_value("digit-5").run()
    caption = shown(at.main.caption[0].value)
    assert not at.exception and "feasible variant kept" not in caption
    assert f"fitted to {first}'s pixel range, not this image's" in caption
    at.selectbox(key="ns_sample").set_value(first).run()
    assert "feasible variant kept" in at.main.caption[0].value  # its own image again: its own numbers


@pytest.mark.slow
def test_this_image_is_fit_on_or_not_by_content_whatever_its_name():
    """chelsea is the current image and a sample photo: the pool holds it once, and the sentence about this image
    says what the synthesis did with that picture — also after switching to its twin name or another image."""
    at = app("pages/nullspace.py")
    at.selectbox(key="ns_sample").set_value("chelsea").run()
    at.radio(key="ns_mode").set_value("Approximate — encoder level").run()
    at.selectbox(key="ns_source").set_value("photos")  # in the form: sent with its button
    at.number_input(key="ns_steps").set_value(3)
    at.button[0].click().run()
    assert not at.exception and not at.error
    noise = at.session_state["current_noise"]
    res, given = noise.synthesis, noise.given_images
    assert len(given) == 1 + len(SAMPLE_PHOTOS) - 1  # chelsea once
    lm = load_model("default")
    for name in ("chelsea", "astronaut", "digit-2"):
        at.selectbox(key="ns_sample").set_value(name).run()
        texts = " ".join(m.value for m in at.markdown)
        fit_on = res.was_fit_on(given, lm.preprocess(sample_image(name)))
        assert ("one of the images δ was fit on" in texts) == fit_on, name
        assert ("not among the images δ was fit on" in texts) == (not fit_on), name
    assert not res.was_fit_on(given, lm.preprocess(sample_image("digit-2")))


@pytest.mark.slow
def test_nullspace_approximate_says_which_images_each_number_is_about_and_traces_the_frontier():
    at = app("pages/nullspace.py")
    at.radio(key="ns_mode").set_value("Approximate — encoder level").run()
    at.number_input(key="ns_steps").set_value(20)
    at.number_input(key="ns_batch").set_value(24)
    at.button[0].click().run()
    assert not at.exception and not at.error
    texts = " ".join(m.value for m in at.markdown)
    assert "**This image**" in texts and "not among the images δ was fit on" in texts
    assert "**The 1,182 images δ was fit on** (measured on 128 of them)" in texts
    assert "**256 images δ never saw**" in texts
    used = " ".join(m.value for m in at.markdown if "Which images" in m.value)
    assert "1,182 training digits" in used and "256 other training digits" in used and "256 held-out digits" in used
    assert "travelled" in metric(at, "‖δ‖₂ (relative)").delta and "random start" in metric(at, "‖δ‖₂ (relative)").help
    assert "Gaussian" in metric(at, "same-norm controls (Σ Δp²)").delta
    assert "ε" in metric(at, "Σ Δp² on this image").delta  # the image's own verdict beside the set's
    assert "they chose δ" in metric(at, "validation: mean Σ Δp²").help
    assert "256 training images" in metric(at, "validation: mean Σ Δp²").help
    # every side note fits its quarter of the page (they were cut mid-number: "Gaussian 4.86e-01 · rando…")
    assert all(len(m.delta or "") <= METRIC_NOTE_CHARS for m in at.metric), [m.delta for m in at.metric]
    res = at.session_state["current_noise"].synthesis
    assert res.check.images == 256 and res.validation.images == 256 and res.fit.images == 1182
    measured = default_synthesis_config("nullviz_digits_vit")
    assert res.config.lam == measured.lam and res.config.batch_size == 24
    assert res.config.selection_margin == measured.selection_margin and res.config.check_every == measured.check_every
    at.text_input(key="ns_sweep_lams").set_value("0, 1")
    at.text_input(key="ns_sweep_steps").set_value("10")
    [b for b in at.button if b.label == "Trace the frontier"][0].click().run()
    assert not at.exception and not at.error
    front = at.session_state["ns_frontier"]
    assert [p.lam for p in front.points] == [0.0, 1.0] and front.num_check_images == 256
    assert front.num_validation_images == 256
    assert any("Largest δ within ε" in m.value for m in at.markdown)
    assert "frontier (JSON)" in {b.proto.label for b in downloads(at)}
    at.text_input(key="ns_sweep_lams").set_value("0, a lot")
    [b for b in at.button if b.label == "Trace the frontier"][0].click().run()
    assert not at.exception and len(at.error) == 1 and "comma-separated numbers" in at.error[0].value


@pytest.mark.slow
def test_nullspace_unoptimised_delta_is_flagged():
    """λ = 0 with a huge ε stops at once: δ is its random start, and the page says it is only small."""
    at = app("pages/nullspace.py")
    at.radio(key="ns_mode").set_value("Approximate — encoder level").run()
    at.number_input(key="ns_lam").set_value(0.0)
    at.number_input(key="ns_lim").set_value(3.0)
    at.number_input(key="ns_tol").set_value(5.0)
    at.number_input(key="ns_batch").set_value(16)
    at.button[0].click().run()
    assert not at.exception
    res = at.session_state["current_noise"].synthesis
    assert res.steps_run == 1 and res.travelled_l2 == 0.0
    # seeded: on the 64 unseen digits this random start is more visible than its permuted control (1.09 vs 0.92)
    assert not res.beats_permuted_on_check
    assert any("no more invisible than its own entries" in w.value for w in at.warning)


def test_attention_page_with_noise_from_nullspace_page_and_attributions():
    at = app("pages/nullspace.py")
    at.button[0].click().run()
    at.switch_page("pages/attention.py").run()
    assert not at.exception
    assert at.radio(key="att_source").value == "noise from the Nullspace page"
    assert "largest per-layer attention change" in at.markdown[0].value
    at.selectbox(key="att_method").set_value("saliency")
    at.button(key="att_go").click().run()
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) >= 6
    sanity = [c.value for c in at.caption if "Nullspace sanity check" in c.value]
    assert len(sanity) == 1 and "fails" not in sanity[0]  # the noise is exact: the gradient map must not move
    at.selectbox(key="att_method").set_value("attention_relevance")  # class-specific, from the registry
    at.button(key="att_go").click().run()
    assert not at.exception and not at.error
    assert "fails" not in [c.value for c in at.caption if "Nullspace sanity check" in c.value][0]
    at.selectbox(key="att_method").set_value("integrated_gradients")
    at.number_input(key="att_steps").set_value(4)
    at.button(key="att_go").click().run()
    verdict = [c.value for c in at.caption if "Nullspace sanity check" in c.value][0]
    assert "per patch (what the ViT reads): passes" in verdict and "per pixel: fails" in verdict
    assert "x − baseline" in verdict
    split = [c.value for c in at.caption if "split patch by patch" in c.value]
    assert len(split) == 1 and "structure the model cannot see" in split[0]  # IG: gradient × input
    assert any("attr_split" in c.proto.id for c in at.get("plotly_chart"))
    at.button(key="att_sanity_all").click().run()  # every method at once, as a figure
    assert not at.exception and not at.error
    bars = _figure(at, "att_sanity_bars")
    per_patch = dict(zip(bars["data"][0]["x"], bars["data"][0]["y"]))
    assert len(per_patch) == 10 and per_patch["Saliency (gradient)"] < 1e-4 < per_patch[
        "Score-CAM (pytorch-grad-cam; a forward per feature channel)"]


def test_attention_page_measures_faithfulness_and_keeps_it_for_its_model_only():
    at = app("pages/attention.py")
    at.number_input(key="att_faith_n").set_value(2)
    at.number_input(key="att_faith_steps").set_value(4)
    at.button(key="FormSubmitter:att_faith_form-Measure faithfulness").click().run()
    assert not at.exception and not at.error
    assert any("att_faith_curves" in c.proto.id for c in at.get("plotly_chart"))
    table = [t.value for t in at.table if "deletion AUC (lower is better)" in list(t.value.columns)]
    assert len(table) == 1 and "random ranking" in list(table[0]["method"]), [t.value for t in at.table]
    at.session_state["model_spec"] = ModelSpec("cluttered", None, "cpu")  # another model: not shown for it
    at.run()
    assert not at.exception and not any("att_faith_curves" in c.proto.id for c in at.get("plotly_chart"))


@pytest.mark.slow
def test_attention_page_contrast_with_an_approximate_delta():
    """An encoder-level δ from the Nullspace page: the contrast chart draws exact noise, δ and a random control
    of each one's norm (the library's contrast_noises, as the CLI)."""
    at = app("pages/nullspace.py")
    at.radio(key="ns_mode").set_value("Approximate — encoder level").run()
    at.number_input(key="ns_steps").set_value(5)
    at.number_input(key="ns_batch").set_value(8)
    at.button[0].click().run()
    at.switch_page("pages/attention.py").run()
    assert not at.exception and not at.error
    chart = [c for c in at.get("plotly_chart") if "att_contrast" in c.proto.id][0]
    names = {trace["legendgroup"] for trace in json.loads(chart.proto.spec)["data"]}  # full names
    assert names == {"exact nullspace noise", "Gaussian, same norm as the exact noise", "approximate δ",
                     "Gaussian, same norm as δ"}, names


@pytest.mark.slow
def test_attention_page_fresh_exact_noise_shows_zero_change():
    at = app("pages/attention.py")
    assert at.radio(key="att_source").value == "fresh exact nullspace noise"
    text = at.markdown[0].value
    value = float(text.rsplit("**", 2)[-2])
    assert value < 1e-5
    assert {b.proto.label for b in downloads(at)} == {"attention + rollouts (.npz)", "per-layer numbers (JSON)",
                                                      "depth curve (HTML)"}
    at.slider(key="att_layer").set_value(1).run()
    at.selectbox(key="att_head").set_value("head 1").run()
    assert not at.exception


@pytest.mark.slow
def test_attention_page_research_views():
    at = app("pages/attention.py")
    assert at.selectbox(key="att_query").value == "CLS"
    at.selectbox(key="att_query").set_value("patch (1, 2)").run()
    assert not at.exception
    at.slider(key="att_q_layer").set_value(2).run()
    at.selectbox(key="att_q_head").set_value("head 3").run()
    assert not at.exception
    subheaders = [h.value for h in at.subheader]
    for needle in ("Any query token", "Heads by depth", "Exact vs approximate vs random", "Over a set of images"):
        assert any(needle in h for h in subheaders), needle
    assert any("Row 7 is the query" in c.value for c in at.caption)  # patch (1, 2) of a 4×4 grid: token 1 + 4 + 2
    at.number_input(key="att_set_n").set_value(24)
    at.number_input(key="att_set_batch").set_value(10)
    [b for b in at.button if b.label == "Compute statistics"][0].click().run()
    assert not at.exception and not at.error
    assert any("**24 images**" in m.value and "top-1 kept on **100.0%**" in m.value for m in at.markdown)
    assert {"set statistics (.npz)", "set statistics (JSON)"} <= {b.proto.label for b in downloads(at)}


@pytest.mark.slow
def test_attention_set_statistics_zip_without_upload_is_a_clear_message():
    at = app("pages/attention.py")
    at.selectbox(key="att_set_source").set_value("upload a zip of an ImageFolder")
    [b for b in at.button if b.label == "Compute statistics"][0].click().run()
    assert not at.exception and "Choose a zip" in at.error[0].value


def test_app_opens_on_the_cluttered_model_by_default(monkeypatch, tmp_path):
    from conftest import _fresh_server

    _fresh_server(monkeypatch, tmp_path, NULLVIZ_DEFAULT_MODEL="cluttered")
    try:
        at = app()
        assert "cluttered-digits ViT" in at.main.caption[-1].value
        assert at.session_state["model_spec"].name == "cluttered"
        at.switch_page("pages/attention.py").run()
        assert not at.exception
        assert at.selectbox(key="att_sample").value == "scene-3"
        assert "patch (7, 7)" in at.selectbox(key="att_query").options
        at.switch_page("pages/finetune.py").run()
        assert at.selectbox(key="ft_source").value == "cluttered digits (the model's own)"
        at.switch_page("pages/model.py").run()
        assert any("cluttered scenes" in b.label for b in at.button)
    finally:
        import app_state

        app_state.server_settings.clear()


def test_learn_page_walkthrough():
    at = app("pages/learn.py")
    for key, value in (("learn_x0", -2.0), ("learn_x1", -0.5), ("learn_x2", 0.5), ("learn_t", 0.3)):
        at.slider(key=key).set_value(value)
    at.run()  # A(x + t·n) is (−1.5, −4e-17): shown as 0.0, not −0.0
    assert any("**A (x + t·n)** = [-1.5, 0.0]" in m.value for m in at.markdown)
    assert not any("-0.0" in m.value for m in at.markdown)
    for key, value in (("learn_x0", 1.0), ("learn_x1", 0.5), ("learn_x2", -0.5), ("learn_t", 1.0)):
        at.slider(key=key).set_value(value)
    at.run()
    assert "Rank–nullity: rank **2** + nullity **1**" in " ".join(m.value for m in at.markdown)
    at.selectbox(key="learn_preset").set_value("rank 1 (a plane of null vectors)").run()
    assert "nullity **2**" in " ".join(m.value for m in at.markdown)
    at.slider(key="learn_s").set_value(1.0).run()
    assert "moved by the non-null part" in " ".join(m.value for m in at.markdown)
    at.number_input(key="learn_index").set_value(5).run()
    rel = [float(v) for v in at.table[0].value["relative logit change"]]
    assert max(rel) < 1e-5
    at.button(key="learn_go").click().run()
    assert not at.exception
    assert at.session_state["ns_mode"] == "Approximate — encoder level"
    assert at.title[0].value == "Nullspace noise"  # switched, with the approximate mode preset
    assert at.number_input(key="ns_steps").value == 100


def test_learn_presentation_mode_is_numbered_steps_with_next_and_back():
    at = app("pages/learn.py")
    assert len(at.header) == 4  # the whole lesson, one scroll
    at.toggle(key="learn_big").set_value(True).run()
    assert not at.exception and not at.warning
    assert [h.value for h in at.header] == ["1 · A small linear map"] and at.session_state["presentation"]
    assert at.query_params["present"] == "1"
    at.button(key="learn_next").click().run()
    assert [h.value for h in at.header] == ["2 · The patch embedding is such a matrix"]
    assert at.query_params["step"] == "2"
    at.button(key="learn_back").click().run()
    assert at.header[0].value.startswith("1 ·") and at.button(key="learn_back").disabled
    at.toggle(key="learn_big").set_value(False).run()
    assert not at.session_state["presentation"]


def test_learn_step_deep_link_opens_step_4_presenting():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params["present"] = "1"
    at.query_params["step"] = "4"
    at.run()
    at.switch_page("pages/learn.py").run()
    assert not at.exception
    assert [h.value for h in at.header] == ["4 · Beyond linear: the approximate nullspace"]
    assert at.session_state["presentation"] and at.button(key="learn_next").disabled
    at.button(key="learn_go").click().run()  # the lesson's last step still links on
    assert at.title[0].value == "Nullspace noise"


def test_learn_page_links_to_finetune():
    at = app("pages/learn.py")
    at.button(key="learn_finetune").click().run()
    assert not at.exception
    assert at.title[0].value == "Nullspace-augmented finetuning"
    assert at.multiselect(key="ft_methods").value == ["baseline", "nullspace"]


@pytest.mark.slow
def test_robustness_page_two_models():
    at = app("pages/robustness.py")
    assert not at.exception
    at.selectbox(key="rob_other").set_value("the embedded default model")
    at.number_input(key="rob_limit").set_value(24)
    at.multiselect(key="rob_corr").set_value(["fog"])
    at.multiselect(key="rob_sev").set_value([1, 3])
    at.button[0].click().run()
    assert not at.exception and not at.error
    table = at.table[0].value
    # each attack with the ε and steps it used (the table said "fgsm" with no budget)
    assert list(table["evaluation"]) == ["clean", "fgsm (L∞ ε = 8/255, one step)", "pgd (L∞ ε = 8/255, 10 steps)",
                                         "corruption mean"]
    assert list(table["Δ (2 − 1)"]) == ["+0.0%"] * 4  # the same model twice
    assert len(downloads(at)) == 2
    assert len(at.get("plotly_chart")) >= 5


@pytest.mark.slow
def test_robustness_page_large_evaluation_runs_as_a_job(server_env):
    jobs_dir = server_env(NULLVIZ_EVAL_JOB_THRESHOLD="1") / "jobs"  # this small evaluation counts as large
    at = app("pages/robustness.py")
    at.number_input(key="rob_limit").set_value(8)
    at.multiselect(key="rob_attacks").set_value(["fgsm"])
    at.multiselect(key="rob_corr").set_value(["fog", "contrast"])
    at.multiselect(key="rob_sev").set_value([1, 2, 3, 4, 5])
    at.number_input(key="rob_batch").set_value(8)
    at.text_input(key="rob_tol").set_value("")
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert at.session_state["rob_job"]
    assert any(b.label == "Stop evaluation" for b in at.button)
    wait_for_job(at)
    table = at.table[0].value
    assert list(table["evaluation"]) == ["clean", "fgsm (L∞ ε = 8/255, one step)", "corruption mean"]
    assert "rob_job" not in at.session_state
    report = json.loads(next(jobs_dir.glob("*/*/reports.json")).read_text())[0]
    assert report["num_images"] == 8 and len(report["corruptions"]["fog"]) == 5
    again = app("pages/robustness.py")  # a reopened tab finds the finished evaluation and shows it
    [b for b in again.button if b.label == "Show"][0].click().run()
    again.run()
    assert not again.exception
    # the budgets come back with the report the job wrote
    assert list(again.table[0].value["evaluation"]) == ["clean", "fgsm (L∞ ε = 8/255, one step)", "corruption mean"]


def test_robustness_page_bad_checkpoint_is_one_message():
    at = app("pages/robustness.py")
    at.selectbox(key="rob_other").set_value("a checkpoint")
    at.text_input(key="rob_other_path").set_value("/nonexistent.safetensors")
    at.button[0].click().run()
    assert not at.exception and "does not exist" in at.error[0].value


def progress_text(at) -> str:
    bars = at.get("progress")
    return bars[0].proto.text if bars else ""


def wait_for_job(at, until=lambda at: bool(at.table), timeout=180):
    """Rerun the page until ``until`` holds (by default: the finished job's table; the job runs in its
    own process)."""
    def rerun_done():
        at.run()
        assert not at.exception, at.exception
        return until(at)

    wait_until(rerun_done, timeout, 0.5, lambda: f"timed out; progress: {progress_text(at)!r}")
    return at


def start_finetune(at, methods, **numbers):
    """Pick methods, set the form's number inputs (ft_<name>) and press Start; the page must accept it."""
    at.multiselect(key="ft_methods").set_value(list(methods))
    for name, value in numbers.items():
        at.number_input(key=f"ft_{name}").set_value(value)
    at.button[0].click().run()
    assert not at.exception and not at.error
    return at


@pytest.mark.slow
def test_finetune_page_start_poll_stop_and_use(jobs_dir):
    at = start_finetune(app("pages/finetune.py"), ["baseline", "nullspace"], epochs=1, steps=3, batch=16,
                        synth_steps=5, eval_steps=5)
    assert at.session_state["ft_job_pick"]
    wait_for_job(at)
    table = at.table[0].value
    assert list(table["method"]) == ["baseline", "nullspace"]
    assert len(downloads(at)) == 6  # every run's curves, comparison JSON + per run: log and checkpoint
    assert "every run's curves (CSV)" in [d.proto.label for d in downloads(at)]  # its content: test_figures
    at.checkbox(key="ft_log_loss").check().run()
    at.slider(key="ft_smoothing").set_value(0.9).run()
    loss = json.loads([c for c in at.get("plotly_chart") if "ft_loss" in c.proto.id][0].proto.spec)
    assert loss["layout"]["yaxis"]["type"] == "log"
    assert any(t.get("marker", {}).get("symbol") == "star" for t in loss["data"])  # the best (lowest) loss
    [b for b in at.button if b.label == "Use the nullspace model"][0].click().run()
    assert at.session_state["model_spec"].checkpoint.endswith("nullspace/model.safetensors")
    assert str(jobs_dir) in at.session_state["model_spec"].checkpoint
    assert at.session_state["_model_spec_changed"]  # the sidebar follows at its next run (next test)


def test_sidebar_follows_a_model_a_page_switched_to():
    """'Use this model' (a page) switches the model: the sidebar then shows a local checkpoint and its path, not
    "Embedded model" with an empty path. (A first run: AppTest drops the sidebar on reruns, see above.)"""
    path = str(ROOT / "assets" / "default_model" / "model.safetensors")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["model_spec"] = ModelSpec("default", path, "cpu")
    at.session_state["model_source"] = "Embedded model (offline)"  # what the sidebar's widgets kept
    at.session_state["model_checkpoint"] = ""
    at.session_state["_model_spec_changed"] = True
    at.run()
    assert not at.exception
    assert at.radio(key="model_source").value == "Local checkpoint"
    assert at.text_input(key="model_checkpoint").value == path and at.text_input(key="model_name").value == ""
    assert "model.safetensors" in shown(at.sidebar.caption[-1].value)


@pytest.mark.slow
def test_finetune_page_compares_methods_over_seeds(jobs_dir):
    at = start_finetune(app("pages/finetune.py"), ["baseline", "nullspace"], epochs=1, steps=2, batch=16,
                        synth_steps=3, eval_steps=3, fresh=1, seeds=2)
    wait_for_job(at, timeout=240)
    assert list(at.table[0].value["method"]) == ["baseline-seed0", "baseline-seed1", "nullspace-seed0",
                                                 "nullspace-seed1"]
    keys = [c.proto.id for c in at.get("plotly_chart")]
    assert any("ft_compare" in k for k in keys) and any("ft_paired" in k for k in keys)
    assert any(b.proto.label == "comparison (JSON)" for b in downloads(at))


@pytest.mark.slow
@pytest.mark.distributed
def test_finetune_page_runs_a_job_on_two_processes(jobs_dir):
    at = start_finetune(app("pages/finetune.py"), ["baseline"], epochs=1, steps=2, batch=8, fresh=0, procs=2)
    wait_for_job(at, timeout=240)
    from nullviz.jobs.queue import JobQueue

    job = JobQueue(jobs_dir, 1).get(at.session_state["ft_job_pick"])
    assert job.params["processes"] == 2 and job.results["baseline"].world_size == 2
    assert "2 processes" in job.label


@pytest.mark.slow
def test_finetune_page_follows_the_job_just_started_not_the_one_shown_before(jobs_dir):
    at = app("pages/finetune.py")
    for steps in (2, 3):
        start_finetune(at, ["baseline"], epochs=1, steps=steps)
        wait_for_job(at)  # the first job's final table is showing when the second is started
    newest = app_state_queue().jobs()[0]
    assert at.selectbox(key="ft_job_pick").value == newest.id
    assert newest.results["baseline"].steps_run == 3


def app_state_queue():
    import app_state

    return app_state.job_queue()


@pytest.mark.slow
def test_finetune_page_stop_button_and_reopen(jobs_dir):
    at = app("pages/finetune.py")
    at.multiselect(key="ft_methods").set_value(["baseline"])
    at.number_input(key="ft_steps").set_value(100_000)
    at.button[0].click().run()
    job_id = at.session_state["ft_job_pick"]
    again = app("pages/finetune.py")  # a new session (a reopened tab) lists the running job
    assert again.selectbox(key="ft_job_pick").value == job_id
    wait_for_job(at, until=lambda at: progress_text(at).startswith("running") and "· training ·" in progress_text(at))
    text = progress_text(at)
    assert "%" in text and " left" in text and "all counted" in text  # one bar for every phase's work
    [b for b in at.button if b.label == "Stop"][0].click().run()
    wait_for_job(at)
    assert "(stopped)" in at.table[0].value["method"].iloc[0]
    assert not any(b.label.startswith("Use the") for b in at.button)  # nothing trained: nothing to use


def test_finetune_page_defaults_are_a_small_run(jobs_dir):  # no jobs yet: the page explains its defaults
    """The form opens on a run small enough to watch (measured ≤ 2 minutes for its three methods on the cluttered
    model, bench/bench_demo.py), and says what it is."""
    at = app("pages/finetune.py")
    values = {k: at.number_input(key=k).value for k in ("ft_epochs", "ft_steps", "ft_synth_steps", "ft_fresh",
                                                          "ft_eval_limit")}
    assert values == {"ft_epochs": 2, "ft_steps": 15, "ft_synth_steps": 30, "ft_fresh": 1, "ft_eval_limit": 256}
    assert at.multiselect(key="ft_methods").value == ["baseline", "nullspace", "gaussian"]
    assert "small run" in at.info[0].value and "2 epochs of 15 steps" in at.info[0].value


def test_finetune_page_papers_recipe_fills_the_form_and_augmentation_needs_natural_images(jobs_dir):
    """The recipe choice fills the form with the paper's values (and back); starting it on the embedded digits
    is one clear message (augmentation is for natural images), no job and no traceback."""
    at = app("pages/finetune.py")
    at.radio(key="ft_recipe").set_value("paper").run()
    assert not at.exception
    assert (at.number_input(key="ft_epochs").value, at.number_input(key="ft_steps").value,
            at.number_input(key="ft_lr").value, at.number_input(key="ft_wd").value,
            at.selectbox(key="ft_augment").value, at.checkbox(key="ft_keep_best").value,
            at.number_input(key="ft_tol").value) == (10, 0, 1e-4, 1e-4, "rrc_flip", True, 0.03)
    at.button[0].click().run()
    assert not at.exception and "augmentation is for natural images" in at.error[0].value
    assert not list(jobs_dir.glob("*/*/job.json"))
    at.radio(key="ft_recipe").set_value("small").run()
    assert (at.number_input(key="ft_epochs").value, at.selectbox(key="ft_augment").value,
            at.checkbox(key="ft_keep_best").value) == (2, "none", False)


def test_finetune_page_bad_folder_message():
    at = app("pages/finetune.py")
    at.selectbox(key="ft_source").set_value("ImageFolder path")
    at.text_input(key="ft_folder").set_value("/nonexistent/folder")
    at.button[0].click().run()
    assert not at.exception and "does not exist" in at.error[0].value


def test_nullspace_empty_and_huge_uploads_are_one_line():
    at = app("pages/nullspace.py")
    at.file_uploader[0].upload("empty.png", b"", "image/png")
    at.run()
    assert not at.exception and "empty" in at.error[0].value
    buf = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buf, format="PNG")  # 64 MP > the 50 MP limit
    at.file_uploader[0].set_value(("huge.png", buf.getvalue(), "image/png"))
    at.run()
    assert not at.exception and "more than the" in at.error[0].value


def _triplet_title(at) -> str:
    chart = [c for c in at.get("plotly_chart") if "triplet" in c.proto.id][0]
    return json.loads(chart.proto.spec)["layout"]["title"]["text"]


@pytest.mark.slow
def test_attention_views_follow_their_inputs():
    """Attributions are shown only for the image and noise they were computed for (a new upload used to get
    the previous image's map and completeness numbers); the block slider and the charts show the same block
    after the noise source changes (the slider showed block 4 while the charts drew block 2)."""
    import torch

    at = app("pages/attention.py")
    at.slider(key="att_layer").set_value(2).run()
    assert "block 2" in _triplet_title(at)
    at.selectbox(key="att_method").set_value("saliency")
    at.button(key="att_go").click().run()
    assert not at.exception and any("saliency, clean" in c.proto.spec for c in at.get("plotly_chart"))
    at.file_uploader(key="att_upload").upload("photo.png", png_bytes(), "image/png").run()  # a new image
    assert not at.exception
    assert any("for another image, noise or model" in i.value for i in at.info)
    assert not any("saliency, clean" in c.proto.spec for c in at.get("plotly_chart"))
    at.button(key="att_go").click().run()  # computed again: shown again
    assert any("saliency, clean" in c.proto.spec for c in at.get("plotly_chart"))

    at.radio(key="att_source").set_value("upload a noise file").run()  # no file yet: the page stops there
    buf = io.BytesIO()
    torch.save({"delta": torch.zeros(3, 32, 32), "meta": {"level": "input"}, "format": "nullviz-noise-1"}, buf)
    at.file_uploader(key="att_noise_file").upload("zero.pt", buf.getvalue(), "application/octet-stream").run()
    assert not at.exception and not at.error
    assert f"block {at.slider(key='att_layer').value}" in _triplet_title(at)
    assert any("for another image, noise or model" in i.value for i in at.info)  # another noise: not shown


# ------------------------------------------------------------------ a model without data of its own
@pytest.mark.slow
def test_a_model_without_its_own_data_never_gets_the_digits(tmp_path):
    """A 1,000-class ViT: the Nullspace page fits δ on the sample photographs (no verdict on too few unseen
    images), the Attention page's set is the sample photographs, the Finetune page offers no 'default digits'
    and says why, and the Robustness page asks for a folder of the model's classes."""
    from nullviz.data import SAMPLE_PHOTOS

    at = app_with_spec(ModelSpec("default", imagenet_like_checkpoint(tmp_path), "cpu"))
    assert not at.exception and "vit_tiny_patch16_224" in shown(at.sidebar.caption[-1].value)

    at.switch_page("pages/nullspace.py").run()
    at.radio(key="ns_mode").set_value("Approximate — encoder level").run()
    assert at.selectbox(key="ns_source").options[0] == "sample photos"
    assert not any("digits" in o for o in at.selectbox(key="ns_source").options)
    at.number_input(key="ns_steps").set_value(3)
    at.button[0].click().run()
    assert not at.exception and not at.error
    page_text = " ".join(m.value for m in at.markdown) + " ".join(c.value for c in at.caption)
    assert "inside ε" not in page_text.replace("not inside ε", "")  # 0 unseen images: no verdict

    at.switch_page("pages/attention.py").run()
    assert at.selectbox(key="att_set_source").value == f"the {len(SAMPLE_PHOTOS)} sample photographs"
    [b for b in at.button if b.label == "Compute statistics"][0].click().run()
    assert not at.exception and not at.error
    assert any(f"**{len(SAMPLE_PHOTOS)} images** (the {len(SAMPLE_PHOTOS)} sample photographs)" in m.value
               for m in at.markdown)

    at.switch_page("pages/finetune.py").run()
    assert not any("digits" in o for o in at.selectbox(key="ft_source").options)
    assert any("has no training images of its own" in i.value for i in at.info)

    at.switch_page("pages/robustness.py").run()
    assert at.text_input(key="rob_data").value == ""
    [b for b in at.button if b.label == "Evaluate"][0].click().run()
    assert not at.exception and "ImageFolder of the model's own classes" in at.error[0].value
    at.text_input(key="rob_data").set_value("digits")
    [b for b in at.button if b.label == "Evaluate"][0].click().run()
    assert not at.exception and "predicts 1,000 classes but the data set has 10" in at.error[0].value


# ------------------------------------------------------------- every view follows its inputs
def _same_architecture_checkpoint(tmp_path) -> str:
    """The digits model's weights, slightly changed, as a checkpoint: same architecture name, another model."""
    import torch
    from safetensors.torch import save_file

    from nullviz.models import load_model

    state = {k: v.clone() for k, v in load_model("default", device="cpu").model.state_dict().items()}
    state["head.bias"] += torch.linspace(-1, 1, state["head.bias"].numel())
    path = tmp_path / "other_digits.safetensors"
    save_file(state, str(path))
    return str(path)


#: What a metric's side note may hold in a quarter of the page before Streamlit cuts it.
METRIC_NOTE_CHARS = 26


def _figure(at, key):
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart") if key in c.proto.id][0]


def _array(value) -> np.ndarray:
    """A figure spec's array: a list, or plotly's typed array ({"dtype", "bdata", "shape"}) for numpy data."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        return flat.reshape([int(n) for n in str(value["shape"]).split(",")]) if "shape" in value else flat
    return np.asarray(value)


def test_nullspace_page_results_follow_the_image_and_the_model(tmp_path):
    """The noise is kept (it is image-agnostic), every view of it is recomputed for a new image, and a model
    change — also another checkpoint of the same architecture — hides it rather than showing it as this
    model's (it compared architecture names only)."""
    at = app("pages/nullspace.py")
    at.button[0].click().run()
    before = _figure(at, "triplet")
    topk_before = _figure(at, "topk")
    at.selectbox(key="ns_sample").set_value("digit-5").run()
    assert not at.exception
    after = _figure(at, "triplet")
    assert before["data"][0]["z"] != after["data"][0]["z"]  # the original image shown is the new one
    assert _figure(at, "topk") != topk_before  # its predictions too
    assert before["data"][1]["z"] == after["data"][1]["z"]  # the same noise
    at.session_state["model_spec"] = ModelSpec("default", _same_architecture_checkpoint(tmp_path), "cpu")
    at.run()
    assert not at.exception
    assert any("made for another model" in i.value for i in at.info)
    assert not [c for c in at.get("plotly_chart") if "triplet" in c.proto.id]


def test_robustness_results_are_never_shown_for_another_model(tmp_path):
    at = app("pages/robustness.py")
    at.number_input(key="rob_limit").set_value(8)
    at.multiselect(key="rob_attacks").set_value(["fgsm"])
    at.multiselect(key="rob_corr").set_value([])
    at.text_input(key="rob_tol").set_value("")
    at.button[0].click().run()
    assert not at.exception and at.table
    at.session_state["model_spec"] = ModelSpec("default", _same_architecture_checkpoint(tmp_path), "cpu")
    at.run()
    assert not at.exception and not at.table and not at.get("plotly_chart")
    assert any("The last evaluation was of nullviz_digits_vit, not the active model" in shown(i.value) for i in at.info)
    at.session_state["model_spec"] = ModelSpec("digits", None, "cpu")
    at.run()
    assert at.table  # kept: switching back shows them again


@pytest.mark.slow
def test_attention_set_statistics_follow_the_noise():
    at = app("pages/attention.py")
    [b for b in at.button if b.label == "Compute statistics"][0].click().run()
    assert not at.exception and any("**64 images**" in m.value for m in at.markdown)
    at.switch_page("pages/nullspace.py").run()
    at.number_input(key="ns_magnitude").set_value(3.0)
    at.button[0].click().run()  # new noise
    at.switch_page("pages/attention.py").run()
    at.radio(key="att_source").set_value("noise from the Nullspace page").run()
    assert not at.exception and not any("**64 images**" in m.value for m in at.markdown)


def test_model_and_learn_pages_follow_the_model():
    at = app("pages/model.py")
    assert metric(at, "Width D").value == "96" and metric(at, "Patch size").value == "8×8"
    at.session_state["model_spec"] = ModelSpec("cluttered", None, "cpu")
    at.run()
    assert metric(at, "Parameters").value != "320,554"
    at.switch_page("pages/learn.py").run()
    assert any("nullviz_cluttered_vit" in shown(m.value) for m in at.markdown)


def test_attention_page_puts_a_finetuned_model_beside_the_one_it_came_from(tmp_path):
    from safetensors.torch import save_file

    from nullviz.models import load_model

    state = {k: v.clone() for k, v in load_model("default", device="cpu").model.state_dict().items()}
    state["blocks.2.attn.qkv.weight"] *= 1.5  # "finetuned": its third block attends differently
    path = tmp_path / "tuned.safetensors"
    save_file(state, str(path))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["model_spec"] = ModelSpec("default", str(path), "cpu")
    at.run()
    at.switch_page("pages/attention.py").run()
    assert not at.exception
    assert at.selectbox(key="att_other_kind").value == "the embedded model it was finetuned from"
    at.button(key="FormSubmitter:att_other_form-Compare the two models").click().run()
    assert not at.exception and not at.error
    depth = _figure(at, "att_other_depth")
    between = [t for t in depth["data"] if t.get("name") == "A vs B, clean: attention TV"][0]["y"]
    assert between[0] == 0 and between[1] == 0 and between[2] > 1e-3  # the change starts at block 3
    assert any("att_other_diff" in c.proto.id for c in at.get("plotly_chart"))
    assert any(c.value.startswith("Prediction clean / noised — A:") for c in at.caption)


def test_attention_page_embeds_one_head_across_images():
    at = app("pages/attention.py")
    at.number_input(key="att_emb_n").set_value(2)
    at.number_input(key="att_emb_block").set_value(2)
    at.button(key="FormSubmitter:att_head_form-Embed queries and keys").click().run()
    assert not at.exception and not at.error
    spec = _figure(at, "att_emb_plot")
    names = {t["name"] for t in spec["data"]}
    assert {"clean · queries", "clean · keys", "exact nullspace noise · queries"} <= names
    assert {"Gaussian, same norm as the exact noise · keys"} <= names
    shift = [c.value for c in at.caption if c.value.startswith("2 images. Mean distance of each point")]
    assert len(shift) == 1
    assert _array(spec["data"][0]["customdata"])[0].tolist() == [1, 0, 0]  # image from 1, (row, column)


@pytest.mark.slow
def test_attention_page_large_head_embedding_runs_as_a_job(server_env):
    """Over the server's threshold the embedding is a background job the page follows (with a Stop button);
    its result is the same embedding as the page computes on the spot."""
    jobs_dir = server_env(NULLVIZ_EVAL_JOB_THRESHOLD="1") / "jobs"  # this small embedding counts as large
    at = app("pages/attention.py")
    at.number_input(key="att_emb_n").set_value(3)
    at.button(key="FormSubmitter:att_head_form-Embed queries and keys").click().run()
    assert not at.exception and not at.error
    assert at.session_state["att_emb_job"] and any(b.label == "Stop the embedding" for b in at.button)
    wait_for_job(at, until=lambda at: any("att_emb_plot" in c.proto.id for c in at.get("plotly_chart")))
    assert "att_emb_job" not in at.session_state
    saved = json.loads(next(jobs_dir.glob("*/*/embedding.json")).read_text())
    assert max(saved["image"]) == 2 and saved["conditions"][:3] == ["clean", "exact", "gaussian@exact"]
    spec = _figure(at, "att_emb_plot")
    clean_q = [t for t in spec["data"] if t["name"] == "clean · queries"][0]
    assert np.allclose(_array(clean_q["x"]), np.asarray(saved["coords"]["clean"])[0, :, 0])


def _tiny_suite(root):
    """ImageNet val and ImageNet-A folders of two images each, in their published layouts."""
    from nullviz.robustness.benchmarks import imagenet_wnids, subset_indices

    rng = np.random.default_rng(0)
    wnids = imagenet_wnids()
    for folder in (root / "val" / wnids[0], root / "val" / wnids[6], root / "imagenet-a" / wnids[subset_indices("a")[0]]):
        folder.mkdir(parents=True)
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    return root


def test_robustness_page_benchmarks_need_an_imagenet_model(tmp_path):
    at = app("pages/robustness.py")
    at.text_input(key="rob_suite_root").set_value(str(_tiny_suite(tmp_path / "suite")))
    at.button(key="FormSubmitter:rob_suite_form-Run the benchmarks").click().run()
    assert not at.exception and "1,000" in at.error[0].value and "ImageNet" in at.error[0].value


@pytest.mark.slow
def test_robustness_page_runs_the_benchmarks_on_the_spot_and_as_a_job(server_env, tmp_path):
    """A 1,000-class model on a tiny root: the table of the columns measured, what was skipped, no average (not
    all eleven); over the server's threshold the same runs as a job, followed until its table shows."""
    root = _tiny_suite(tmp_path / "suite")
    ck = imagenet_like_checkpoint(tmp_path)

    def page():
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
        at.session_state["model_spec"] = ModelSpec("vit_tiny_patch16_224", ck, "cpu")
        at.run()
        at.switch_page("pages/robustness.py").run()
        at.text_input(key="rob_suite_root").set_value(str(root))
        at.number_input(key="rob_suite_limit").set_value(2)
        at.multiselect(key="rob_suite_attacks").set_value([])
        at.button(key="FormSubmitter:rob_suite_form-Run the benchmarks").click().run()
        assert not at.exception and not at.error
        return at

    at = page()
    table = at.table[0].value
    assert list(table["benchmark"]) == ["clean", "a"]
    assert any("no paper's average: missing" in c.value for c in at.caption)
    assert any(c.value.startswith("Skipped — ImageNet-R") for c in at.caption)
    server_env(NULLVIZ_EVAL_JOB_THRESHOLD="1")
    at = page()
    assert at.session_state["rob_suite_job"] and any(b.label == "Stop the benchmarks" for b in at.button)
    wait_for_job(at)
    assert list(at.table[0].value["benchmark"]) == ["clean", "a"] and "rob_suite_job" not in at.session_state


def test_a_hugging_face_vit_runs_the_nullspace_and_attention_pages(tmp_path):
    """A transformers ViT (tiny, random, saved to a folder) as the active model: converted once, the pages work on
    it unchanged."""
    from transformers import ViTConfig, ViTForImageClassification

    ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64, image_size=32, patch_size=8,
                                        num_labels=3)).save_pretrained(tmp_path / "vit")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["model_spec"] = ModelSpec(f"hf:{tmp_path / 'vit'}", None, "cpu")
    at.run()
    for page in ("pages/nullspace.py", "pages/attention.py", "pages/model.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)


def test_the_warmed_training_images_are_what_the_page_uses(monkeypatch):
    """server.py prepares the default model's pool before ready; a session's view of the model then finds it."""
    import app_state

    app_state.warm_synthesis_pool()

    def not_again(*args, **kwargs):
        raise AssertionError("the training images were prepared a second time")

    monkeypatch.setattr(app_state, "synthesis_sets", not_again)
    prepared = app_state.own_synthesis_sets(app_state.current_model())
    assert len(prepared.fit) == len(prepared.fit_logits) and set(prepared.used) >= {"fit", "validation", "test"}
    assert len(prepared.validation) == len(prepared.validation_logits) > 0
    assert len(prepared.test) == len(prepared.test_logits) > 0
