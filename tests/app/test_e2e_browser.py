"""End to end: `streamlit run server.py` on a free local port, driven by real headless Chromium (Playwright)."""

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect

from conftest import ROOT, streamlit_server, wait_until

pytestmark = pytest.mark.browser  # a real server driven by Chromium

RUN_COUNTER = (ROOT / "bench" / "run_counter.js").read_text()  # the script-run counter the latency benches use


@pytest.fixture(scope="module")
def server():
    with streamlit_server() as url:
        yield url


def test_server_loads_the_default_model_before_the_first_visitor(server):
    """server.py warms the shared caches at start (issue: first figure of a fresh server); the log says so."""
    ready = wait_until(lambda: re.search(r"nullviz: default model '(\w+)' and the Home picture ready", server.output()),
                       120, 0.2, server.output)
    assert ready.group(1) == os.environ["NULLVIZ_DEFAULT_MODEL"]
    assert "warming the default model failed" not in server.output()
    # before ready, it also prepares the default model's training images for the Nullspace page's δ (the log is
    # read by a thread of the fixture: a moment to arrive)
    wait_until(lambda: "training images for δ ready" in server.output(), 10, 0.2, server.output)
    assert "preparing the training images failed" not in server.output()


def test_open_app_switch_to_model_page_and_screenshot(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server)
    page.get_by_role("heading", name="nullviz — noise a Vision Transformer cannot see").wait_for(timeout=60_000)
    page.locator("[data-testid='stSidebarNav']").get_by_text("Model", exact=True).click()
    page.get_by_text("Patch size").wait_for(timeout=60_000)
    expect(page.get_by_text("8×8").first).to_be_visible(timeout=30_000)
    expect(page.get_by_text("320,554").first).to_be_visible(timeout=30_000)
    shot = tmp_path / "model_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert page.locator("[data-testid='stException']").count() == 0


def test_sidebar_rejects_non_vit_without_traceback(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server)
    page.get_by_text("Load model").wait_for(timeout=60_000)
    page.get_by_text("timm name (pretrained, downloads)").click()
    page.get_by_placeholder("vit_tiny_patch16_224").fill("resnet50")
    page.get_by_role("button", name="Load model").click()
    page.get_by_text("is not a plain Vision Transformer").wait_for(timeout=60_000)
    assert page.locator("[data-testid='stException']").count() == 0
    sidebar = page.locator("[data-testid='stSidebar']")
    expect(sidebar.get_by_text("Active:")).to_contain_text("nullviz_digits_vit", timeout=30_000)  # default stays


def test_exact_noise_in_the_browser(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server + "/nullspace")
    page.get_by_text("Choose a kind of noise and press").wait_for(timeout=90_000)  # the page's run is done
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)
    page.get_by_role("button", name="Make noise").click(timeout=60_000)
    expect(page.get_by_text("relative logit change").first).to_be_visible(timeout=90_000)
    page.get_by_text("Verification").scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "nullspace.png"))
    assert page.locator("[data-testid='stException']").count() == 0
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 3", timeout=60_000)


def test_sidebar_loads_a_cached_timm_vit_offline(browser, tmp_path):
    """A common ViT picked in the sidebar loads from a hub cache (written by the test) with no network and
    without HF_HUB_OFFLINE: the pre-check used to refuse it."""
    from nullviz.models import create_random_vit
    from conftest import fake_hub_cache

    weights = create_random_vit("vit_tiny_patch16_224", seed=3).model.state_dict()
    fake_hub_cache(tmp_path / "hub", "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", weights)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_ENDPOINT": "https://hub.invalid",
           "NULLVIZ_DATA_DIR": str(tmp_path / "data")}
    env.pop("HF_HUB_OFFLINE", None)
    with streamlit_server({**env, "HF_HUB_OFFLINE": ""}) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        sidebar = page.locator('[data-testid="stSidebar"]')
        expect(sidebar.get_by_text("Active:").first).to_be_visible(timeout=90_000)
        sidebar.get_by_text("timm name (pretrained, downloads)").click()
        sidebar.locator('[data-testid="stSelectbox"]').filter(has_text="Common ViTs").click()
        page.get_by_text("vit_tiny_patch16_224 — 768→192, nullity ≥ 576 · cached").click()
        sidebar.get_by_role("button", name="Load model").click()
        expect(sidebar.get_by_text("vit_tiny_patch16_224", exact=False).last).to_be_visible(timeout=60_000)
        expect(sidebar.locator('[data-testid="stCaptionContainer"]').filter(has_text="Active:")).to_contain_text(
            "vit_tiny_patch16_224", timeout=60_000)
        assert sidebar.locator('[data-testid="stAlert"]').count() == 0
        page.close()


def test_sidebar_shows_every_model_entry_whole(server, browser):
    """Every entry of the sidebar's model lists fits its row, with ' · cached' added (at Streamlit's 300 px
    sidebar the common-ViT entries were cut before their nullity, 'cached' never showed)."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(server)
    sidebar = page.locator("[data-testid='stSidebar']")
    sidebar.get_by_text("Common ViTs").wait_for(timeout=90_000)
    for index in (0, 1):  # the embedded models, the common ViTs
        sidebar.locator("[data-testid='stSelectbox']").nth(index).click()
        page.wait_for_selector("[role='option']", timeout=10_000)
        rows = page.evaluate("""() => [...document.querySelectorAll('[role=option]')].map(o => {
            const text = o.querySelector('div') || o, ctx = document.createElement('canvas').getContext('2d');
            ctx.font = getComputedStyle(text).font;
            return [o.innerText, ctx.measureText(o.innerText.replace(' · cached', '') + ' · cached').width,
                    text.clientWidth]})""")
        assert len(rows) >= 2
        cut = [(label, round(need), room) for label, need, room in rows if need > room]
        assert cut == [], cut
        page.keyboard.press("Escape")
    page.close()


def test_presentation_mode_deep_link_steps_and_leave(server, browser):
    """/learn?present=1&step=4 opens step 4 presenting: no sidebar, larger text; Back goes to step 3 (in the URL
    too); leaving brings the sidebar back."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server + "/learn?present=1&step=4")
    page.get_by_role("heading", name="4 · Beyond linear: the approximate nullspace").wait_for(timeout=90_000)
    expect(page.get_by_text("Step 4 of 4")).to_be_visible(timeout=30_000)
    expect(page.locator("[data-testid='stSidebar']")).to_be_hidden()
    root_font = page.evaluate("parseFloat(getComputedStyle(document.documentElement).fontSize)")
    assert root_font == pytest.approx(16 * 1.3)
    page.get_by_role("button", name="← Back").click()
    page.get_by_role("heading", name="3 · One patch, then the whole image").wait_for(timeout=60_000)
    page.wait_for_function("location.search.includes('step=3')", timeout=30_000)
    page.get_by_role("button", name="Leave presentation mode").click()
    expect(page.locator("[data-testid='stSidebar']")).to_be_visible(timeout=60_000)
    assert page.locator("[data-testid='stException']").count() == 0


FIT_MEASURE = """() => {
  const W = window.innerWidth, boxes = [];
  for (const el of document.querySelectorAll('.js-plotly-plot, [data-testid=stDataFrame], [data-testid=stTable]'))
    boxes.push({kind: el.classList.contains('js-plotly-plot') ? 'figure' : el.dataset.testid,
                left: el.getBoundingClientRect().left, right: el.getBoundingClientRect().right,
                overflow: el.scrollWidth - el.clientWidth});
  const images = [...document.querySelectorAll('.js-plotly-plot image')].map(e => e.getBoundingClientRect().right);
  return {W, boxes, images};
}"""


@pytest.mark.parametrize("viewport", [(1280, 720), (1920, 1080)])
def test_presentation_mode_fits_the_screen(server, browser, tmp_path, viewport):
    """Presenting at a projector's 1280×720 and 1920×1080: no figure or table of any Learn step reaches past the
    viewport, every one of step 2's eight basis patches and step 3's three images is inside it (with CSS zoom
    the figures were laid out and then scaled 1.3×: the spectrum was cut, 6 of 8 patches showed). Screenshots
    of each step are kept in the test's folder."""
    width, height = viewport
    page = browser.new_page(viewport={"width": width, "height": height})
    expected = {1: (1, 0), 2: (2, 8), 3: (1, 3)}  # step: (figures, images inside figures)
    for step, (n_figures, n_images) in expected.items():
        page.goto(f"{server}/learn?present=1&step={step}")
        page.get_by_text(f"Step {step} of 4").wait_for(timeout=90_000)
        page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length >= {n_figures}",
                               timeout=90_000)
        page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot image').length >= {n_images}",
                               timeout=30_000)
        page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)
        expect(page.locator("[data-testid='stSidebar']")).to_be_hidden()
        page.screenshot(path=tmp_path / f"step{step}-{width}x{height}.png")
        fit = page.evaluate(FIT_MEASURE)
        assert fit["W"] == width
        assert len([b for b in fit["boxes"] if b["kind"] == "figure"]) == n_figures
        for box in fit["boxes"]:
            assert box["left"] >= 0 and box["right"] <= width, (step, box)
            assert box["overflow"] <= 12, (step, box)  # a table scrolled sideways hides a column
        assert len(fit["images"]) == n_images and all(right <= width for right in fit["images"]), (step, fit)
    assert page.locator("[data-testid='stException']").count() == 0
    page.close()


def test_presentation_next_opens_the_next_step_at_its_top(server, browser):
    """At a projector's 1280×720, Next after reading a step to its end shows the new step's first line (Streamlit
    kept the scroll position: each step opened at its bottom)."""
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.goto(f"{server}/learn?present=1&step=1")
    page.get_by_text("Step 1 of 4").wait_for(timeout=90_000)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)
    for step in (2, 3):
        page.get_by_role("button", name="Next →").scroll_into_view_if_needed()  # read to the end of the step
        page.get_by_role("button", name="Next →").click()
        page.get_by_text(f"Step {step} of 4").wait_for(timeout=90_000)
        page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)
        page.wait_for_timeout(1500)  # the step's figures have drawn and sized themselves
        box = page.get_by_role("heading", name=re.compile(rf"^{step} · ")).bounding_box()
        assert box is not None and 0 <= box["y"] and box["y"] + box["height"] <= 720, (step, box)
    assert page.locator("[data-testid='stException']").count() == 0
    page.close()


def test_cluttered_default_pick_a_query_patch_by_clicking(browser, tmp_path):
    """The app's shipped default (the cluttered-digits ViT, 8×8 tokens): clicking a patch on the query overlay
    makes it the query token."""
    with streamlit_server({"NULLVIZ_DEFAULT_MODEL": "cluttered", "NULLVIZ_DATA_DIR": str(tmp_path / "data")}) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url + "/attention")
        page.get_by_text("Prediction clean").first.wait_for(timeout=90_000)
        sidebar = page.locator('[data-testid="stSidebar"]')
        expect(sidebar.locator('[data-testid="stCaptionContainer"]').filter(has_text="Active:")).to_contain_text(
            "nullviz_cluttered_vit", timeout=60_000)
        chart = page.locator(".st-key-att_query_pick .js-plotly-plot")
        chart.scroll_into_view_if_needed(timeout=60_000)
        page.wait_for_function("document.querySelector('.st-key-att_query_pick .js-plotly-plot')._fullLayout",
                               timeout=60_000)
        # screen position of patch (5, 2)'s centre, from plotly's own axes
        x, y = page.evaluate("""() => {
            const gd = document.querySelector('.st-key-att_query_pick .js-plotly-plot');
            const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
            return [box.left + xa._offset + xa.l2p(2.5 * 8 - 0.5), box.top + ya._offset + ya.l2p(5.5 * 8 - 0.5)];
        }""")
        page.mouse.click(x, y)
        fresh = "[data-stale='false']"  # the rerun's elements (the fragment keeps the old ones until it is done)
        expect(page.locator(f".st-key-att_query_pick{fresh}")).to_contain_text("patch (5, 2) → patches",
                                                                            timeout=60_000)
        assert page.locator("[data-testid='stException']").count() == 0
        page.close()


#: Records the visible elements outside a container that Streamlit marks stale (what a rerun of the whole page
#: does to everything it redraws); a fragment's rerun leaves them alone.
STALE_OUTSIDE = """(key) => {
  window.__staleOutside = [];
  new MutationObserver((ms) => { for (const m of ms) {
      const el = m.target;
      const visible = (el.innerText || '').trim() !== '' || el.querySelector('canvas, svg, img');
      if (el.getAttribute('data-stale') === 'true' && visible && !el.closest('.st-key-' + key))
        window.__staleOutside.push((el.innerText || '').trim().slice(0, 60)); } })
    .observe(document.body, {attributes: true, subtree: true, attributeFilter: ['data-stale']});
}"""



def test_frontier_reruns_only_its_panel_and_downloads_rerun_nothing(server, browser):
    """Tracing the frontier is a fragment: the noise, charts and numbers above it are not redrawn (a full
    rerun, the control, marks them stale); downloading its JSON reruns nothing."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page.goto(server + "/nullspace")
    page.get_by_text("Approximate — encoder level").click()
    page.get_by_label("steps", exact=True).fill("20")
    page.get_by_label("batch (images per step)", exact=True).fill("24")
    page.get_by_role("button", name="Make noise").click()
    page.get_by_text("The frontier: how large").wait_for(timeout=120_000)
    page.wait_for_selector("[data-test-script-state='notRunning']", timeout=120_000)
    page.evaluate(STALE_OUTSIDE, "ns_frontier_panel")
    page.get_by_text("The frontier: how large").click()
    page.get_by_label("λ values").fill("0, 1")
    page.locator(".st-key-ns_sweep_steps input").fill("10")
    page.get_by_role("button", name="Trace the frontier").click()
    page.get_by_text("Largest δ within ε = ").wait_for(timeout=120_000)
    page.wait_for_selector("[data-test-script-state='notRunning']", timeout=120_000)
    assert page.evaluate("window.__staleOutside") == []
    runs = page.evaluate(RUN_COUNTER)
    with page.expect_download(timeout=30_000) as download:
        page.get_by_role("button", name="frontier (JSON)").click()
    assert download.value.suggested_filename == "frontier.json"
    with page.expect_download(timeout=30_000) as download:  # made when pressed (a callable), not at every run
        page.get_by_role("button", name="top-k chart (HTML)").click()
    html = Path(download.value.path()).read_text()
    assert download.value.suggested_filename == "topk.html" and "Plotly.newPlot" in html
    page.wait_for_timeout(1500)  # a rerun would have started by now
    assert page.evaluate(RUN_COUNTER) == runs
    page.get_by_role("button", name="Make noise").click()  # the control: a full rerun marks the page stale
    page.wait_for_function("window.__staleOutside.length > 0", timeout=120_000)
    page.wait_for_selector("[data-test-script-state='notRunning']", timeout=120_000)
    assert page.locator("[data-testid='stException']").count() == 0
    page.close()


def test_no_request_leaves_the_servers_origin(server, browser):
    """Every request of a page load — the app's, its icons', its fonts', the Nullspace page's figures — goes to
    the server itself (a classroom without internet; no student's browser calls a third party)."""
    page = browser.new_page()
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    page.goto(server + "/nullspace")
    page.get_by_text("Choose a kind of noise and press").wait_for(timeout=90_000)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)
    page.get_by_role("button", name="Make noise").click()
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2", timeout=60_000)
    page.wait_for_timeout(1500)  # late requests (favicon, fonts) have gone out by now
    foreign = [u for u in seen if not u.startswith((server, "data:", "blob:"))]
    assert seen and foreign == []
    page.close()


def test_deep_links_make_no_failed_requests(server, browser):
    """Opening a page at its own address (a teacher's link, a reload): Streamlit's browser code asked
    /learn/_stcore/health and /learn/_stcore/host-config first, two 404s per load (streamlit#7074); server.py
    tells it the server is at the root."""
    for path, heading in (("/learn?present=1&step=2", "2 · The patch embedding is such a matrix"),
                          ("/attention", "Attention, clean vs. noised"), ("/", "nullviz")):
        page = browser.new_page()
        failed: list[tuple[int, str]] = []
        page.on("response", lambda r: failed.append((r.status, r.url)) if r.status >= 400 else None)
        page.on("requestfailed", lambda r: failed.append((0, r.url)))
        page.goto(server + path)
        page.get_by_role("heading", name=heading).first.wait_for(timeout=90_000)
        page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)
        page.wait_for_timeout(1000)
        assert failed == [], (path, failed)
        assert page.evaluate("window.__streamlit.BACKEND_BASE_URL") == server + "/"
        # the first page's lazily loaded chunks are preloaded from the HTML (server.FIRST_PAGE_CHUNKS), and found
        for chunk in ("Radio", "Selectbox", "TextInput", "ImageList", "Html", "Button"):
            assert page.locator(f'link[rel=modulepreload][href^="./static/js/{chunk}."]').count() == 1, chunk
        page.close()


def test_the_chart_library_is_imported_while_the_first_page_is_idle(server, browser):
    """Every page but Home draws Plotly figures: its chunk (4.7 MB) is imported once the first page has drawn and
    the browser is idle (server.IDLE_CHUNKS), from the address Streamlit's own code imports it from, so the first
    chart fetches nothing more. It used to load with the first chart: on the Nullspace page, in the middle of the
    default δ, on the cores the δ ran on."""
    plotly_fetches = ("performance.getEntriesByType('resource')"
                      ".filter(e => e.name.includes('/static/js/PlotlyChart.')).length")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server + "/")
    page.get_by_role("heading", name="nullviz").first.wait_for(timeout=90_000)
    page.wait_for_function(f"{plotly_fetches} === 1", timeout=60_000)
    assert page.locator(".js-plotly-plot").count() == 0  # imported before any chart asked for it
    page.locator("[data-testid='stSidebarNav']").get_by_text("Nullspace", exact=True).click()
    page.get_by_text("Choose a kind of noise and press").wait_for(timeout=90_000)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)
    page.get_by_role("button", name="Make noise").click(timeout=60_000)
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 3", timeout=90_000)
    assert page.evaluate(plotly_fetches) == 1  # the charts drew from the module already imported
    assert page.locator("[data-testid='stException']").count() == 0
    page.close()


def test_block_slider_and_charts_show_the_same_block_after_the_noise_source_changes(server, browser, tmp_path):
    """Block 2 chosen, then the noise source switched to a file (the page stops until one is uploaded), then a
    file: the slider used to be drawn at its default while the charts drew block 2."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"delta": torch.zeros(3, 32, 32), "meta": {"level": "input"}, "format": "nullviz-noise-1"}, buf)
    noise_file = tmp_path / "zero.pt"
    noise_file.write_bytes(buf.getvalue())
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server + "/attention")
    page.get_by_text("Any query token").wait_for(timeout=90_000)
    page.wait_for_selector("[data-test-script-state='notRunning']", timeout=60_000)
    slider = page.locator(".st-key-att_layer input[type=range]")
    slider.focus()
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")
    expect(page.locator(".gtitle").filter(has_text="patch attention, block 2")).to_have_count(1, timeout=60_000)
    page.get_by_text("upload a noise file").click()
    page.get_by_text("Upload a noise file saved from").wait_for(timeout=60_000)
    page.locator(".st-key-att_noise_file input[type='file']").set_input_files(str(noise_file))
    page.get_by_text("Any query token").wait_for(timeout=60_000)
    page.wait_for_selector("[data-test-script-state='notRunning']", timeout=60_000)
    shown = int(slider.input_value())
    expect(page.locator(".gtitle").filter(has_text=f"patch attention, block {shown},")).to_have_count(1, timeout=30_000)
    assert shown == 2
    assert page.locator("[data-testid='stException']").count() == 0
    page.close()


#: Drags a lasso around a plotly chart's whole plot area (real mouse events), selecting every point.
LASSO_ALL = """(sel) => {
    const gd = document.querySelector(sel);
    const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
    const l = box.left + xa._offset + 2, r = l + xa._length - 4, t = box.top + ya._offset + 2, b = t + ya._length - 4;
    return [[l, t], [r, t], [r, b], [l, b], [l, t + 3]];
}"""


def test_explanation_panels_in_the_browser(server, browser):
    """The Attention page's new panels, clicked through in Chromium: a class-specific map with its nullspace
    sanity verdict, every method's check, faithfulness curves and table, and the head view — where a lasso
    around its points shows their image patches."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server + "/attention")
    page.get_by_text("Any query token").wait_for(timeout=90_000)
    page.wait_for_selector("[data-test-script-state='notRunning']", timeout=60_000)
    method = page.locator(".st-key-att_method button[aria-label='Open']")  # the select box's own opener
    method.scroll_into_view_if_needed(timeout=30_000)
    option = page.get_by_role("option", name="Attention relevance (Chefer et al., class-specific)")
    for attempt in range(3):  # a rerun that lands while the list is open closes it (CI once timed out here)
        method.click()
        try:
            option.click(timeout=15_000)
            break
        except PlaywrightTimeoutError:
            if attempt == 2:
                raise
            page.keyboard.press("Escape")
            page.wait_for_selector("[data-test-script-state='notRunning']", timeout=60_000)
    expect(page.locator(".st-key-att_method input[role='combobox']")).to_have_value(
        re.compile("^Attention relevance"), timeout=30_000)
    page.wait_for_selector("[data-test-script-state='notRunning']", timeout=60_000)
    page.get_by_role("button", name="Compute attributions").click()
    verdict = page.locator("[data-testid='stCaptionContainer']").filter(has_text="Nullspace sanity check.")
    expect(verdict).to_contain_text("passes (float32 rounding)", timeout=120_000)
    page.get_by_role("button", name="Check every method against exact nullspace noise").click()
    page.locator(".st-key-att_sanity_bars .js-plotly-plot").wait_for(timeout=180_000)

    page.locator(".st-key-att_faith_n input").fill("2")
    page.locator(".st-key-att_faith_steps input").fill("4")
    page.get_by_role("button", name="Measure faithfulness").click()
    page.get_by_text("beats random on both").wait_for(timeout=180_000)
    page.locator(".st-key-att_faith_curves .js-plotly-plot").wait_for(timeout=60_000)

    page.locator(".st-key-att_emb_n input").fill("2")
    page.get_by_role("button", name="Embed queries and keys").click()
    chart = ".st-key-att_emb_plot .js-plotly-plot"
    page.locator(chart).wait_for(timeout=120_000)
    page.wait_for_selector("[data-test-script-state='notRunning']", timeout=60_000)
    page.locator(chart).scroll_into_view_if_needed()
    page.wait_for_function(f"document.querySelector('{chart}')._fullLayout", timeout=60_000)
    path = page.evaluate(LASSO_ALL, chart)
    page.mouse.move(*path[0])
    page.mouse.down()
    for x, y in path[1:]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()
    page.locator(".st-key-att_emb_patches .js-plotly-plot").wait_for(timeout=60_000)
    expect(page.get_by_text(re.compile(r"\d+ token\(s\) selected, the first 18 shown"))).to_be_visible(timeout=30_000)
    assert page.locator("[data-testid='stException']").count() == 0
    page.close()
