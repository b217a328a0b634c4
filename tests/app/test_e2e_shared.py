"""End to end, shared mode: `NULLVIZ_SHARED=1 streamlit run server.py`, two Chromium contexts (two students)."""

import pytest
from playwright.sync_api import expect

from conftest import CLASS_CODE, streamlit_server

pytestmark = pytest.mark.browser  # a real shared server, two Chromium contexts


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory):
    return tmp_path_factory.mktemp("shared-server")


@pytest.fixture(scope="module")
def shared_url(shared_data):
    with streamlit_server({"NULLVIZ_SHARED": "1", "NULLVIZ_MAX_UPLOAD_MB": "1", "NULLVIZ_DATA_DIR": str(shared_data),
                           "NULLVIZ_ACCESS_CODE": CLASS_CODE}) as url:
        yield url


def image_folder_zip(classes: int) -> bytes:
    """A zip of an ImageFolder: ``classes`` folders of two 32×32 PNGs each."""
    import io
    import zipfile

    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for c in range(classes):
            for k in range(2):
                png = io.BytesIO()
                Image.new("RGB", (32, 32), (25 * c, 40 * k, 90)).save(png, format="PNG")
                z.writestr(f"data/{c}/{k}.png", png.getvalue())
    return buf.getvalue()


def no_exception(page):
    assert page.locator("[data-testid='stException']").count() == 0


def test_shared_mode_has_no_server_paths_and_caps_uploads(shared_url, browser, tmp_path):
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(shared_url + f"/nullspace?code={CLASS_CODE}")
    sidebar = page.locator("[data-testid='stSidebar']")
    expect(sidebar.get_by_text("Upload a checkpoint")).to_be_visible(timeout=90_000)
    assert page.get_by_placeholder("/path/to/model.safetensors").count() == 0  # no server path field
    assert "ws=" in page.url
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (2 * 2**20))
    page.locator("[data-testid='stMain'] input[type='file']").first.set_input_files(str(big))
    expect(page.get_by_text("File must be 1.0MB or smaller.")).to_be_visible(timeout=30_000)
    no_exception(page)
    page.goto(shared_url + f"/finetune?code={CLASS_CODE}")
    page.get_by_role("button", name="Start").wait_for(timeout=90_000)
    page.get_by_text("data", exact=True).first.wait_for()
    page.locator("[data-testid='stSelectbox']").filter(has_text="data").first.click()
    options = page.locator("[role='option']").all_inner_texts()
    assert "ImageFolder path" not in options and "upload a zip of an ImageFolder" in options
    page.keyboard.press("Escape")
    no_exception(page)


def test_two_students_a_running_job_and_attention_at_once(shared_url, browser):
    alice = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    bob = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    alice.goto(shared_url + f"/finetune?code={CLASS_CODE}")
    alice.get_by_role("button", name="Start").wait_for(timeout=90_000)
    alice.get_by_label("epochs").fill("1")
    alice.get_by_label("steps per epoch (0 = full pass)").fill("40")
    alice.get_by_role("button", name="Start").click()
    expect(alice.get_by_text("Your jobs").first).to_be_visible(timeout=60_000)

    bob.goto(shared_url + f"/finetune?code={CLASS_CODE}")
    expect(bob.get_by_text("Pick methods and press").first).to_be_visible(timeout=90_000)  # none of alice's jobs
    bob.goto(shared_url + f"/attention?code={CLASS_CODE}")
    for seed in ("1", "2"):
        box = bob.get_by_label("seed")
        box.wait_for(timeout=90_000)
        box.fill(seed)
        box.press("Enter")
        expect(bob.get_by_text("Prediction clean").first).to_be_visible(timeout=90_000)
        no_exception(bob)

    expect(alice.get_by_text("Final numbers").first).to_be_visible(timeout=300_000)
    no_exception(alice)
    alice.reload()  # same ?ws= link: the finished job is still hers
    expect(alice.get_by_text("Final numbers").first).to_be_visible(timeout=90_000)


def test_an_uploaded_data_zip_is_deleted_after_an_estimate_or_a_refusal(shared_url, shared_data, browser):
    """Estimate time unpacks the zip to time a step and deletes it after; a zip the model's head cannot take is
    deleted as it is refused. (That Start keeps the folder its job reads is Workspace.upload_folder's test: in
    two CI runs this test's Start found no folder kept, which it does here; see the stop's note.)"""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(shared_url + f"/finetune?code={CLASS_CODE}")
    page.get_by_role("button", name="Start").wait_for(timeout=90_000)

    def unpacked() -> list:
        return [p for p in (shared_data / "uploads").glob("*/*") if p.is_dir()]

    def use_zip(classes: int) -> None:
        page.locator(".st-key-ft_source button[aria-label='Open']").click()
        page.locator("[role='option']").filter(has_text="upload a zip of an ImageFolder").click()
        page.locator(".st-key-ft_zip input[type='file']").set_input_files(
            files=[{"name": f"data{classes}.zip", "mimeType": "application/zip", "buffer": image_folder_zip(classes)}])
        page.get_by_text(f"data{classes}.zip").wait_for(timeout=30_000)

    page.get_by_label("epochs").fill("1")
    page.get_by_label("steps per epoch (0 = full pass)").fill("2")
    use_zip(10)
    page.get_by_role("button", name="Estimate time").click()
    expect(page.get_by_text("These settings:").first).to_be_visible(timeout=120_000)
    page.wait_for_selector("[data-test-script-state='notRunning']", timeout=120_000)
    assert unpacked() == []  # estimated, then deleted
    use_zip(3)
    page.get_by_role("button", name="Estimate time").click()
    expect(page.get_by_text("but the training data has 3").first).to_be_visible(timeout=60_000)
    page.wait_for_selector("[data-test-script-state='notRunning']", timeout=120_000)
    assert unpacked() == []  # refused: nothing kept
    no_exception(page)
