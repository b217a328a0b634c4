import io

import numpy as np
import pytest
from PIL import Image

from nullviz import data
from nullviz.core.errors import DataError, ImageLoadError


def _png(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_digits_split_is_fixed_and_disjoint():
    tr_imgs, tr_y = data.digits_split("train")
    he_imgs, he_y = data.digits_split("heldout")
    assert len(tr_y) + len(he_y) == 1797 and len(he_y) == 359
    tr = {im.tobytes() + bytes([y]) for im, y in zip(tr_imgs, tr_y)}
    assert tr_imgs[0].mode == "RGB" and tr_imgs[0].size == (8, 8)
    assert data.digits_split("heldout")[1] == he_y  # same split every time
    assert set(range(10)) == set(he_y)
    assert len(tr) > 1000
    with pytest.raises(DataError):
        data.digits_split("test")


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "rocket", "camera", "digit-0", "digit-9"])
def test_samples_are_rgb(name):
    img = data.sample_image(name)
    assert img.mode == "RGB" and min(img.size) >= 8


def test_unknown_sample():
    with pytest.raises(ImageLoadError, match="Unknown sample"):
        data.sample_image("mona-lisa")
    with pytest.raises(ImageLoadError):
        data.sample_image("digit-12")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_upload_modes_become_rgb(mode):
    base = Image.new("RGB", (20, 10), (200, 100, 50))
    if mode == "I;16":
        img = Image.fromarray((np.arange(200).reshape(10, 20) * 300).astype(np.uint16))
    elif mode == "P":
        img = base.convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        img = base.convert(mode)
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    out = data.load_image_bytes(_png(img, fmt))
    assert out.mode == "RGB" and out.size == (20, 10)


def test_rgba_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert data.load_image_bytes(_png(img)).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (30, 10), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = data.load_image_bytes(_png(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (10, 30)


def test_bad_uploads():
    with pytest.raises(ImageLoadError, match="empty"):
        data.load_image_bytes(b"")
    with pytest.raises(ImageLoadError, match="not an image"):
        data.load_image_bytes(b"%PDF-1.4 definitely not an image")
    full = _png(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        data.load_image_bytes(full[: len(full) // 2])
    with pytest.raises(ImageLoadError, match="pixels, more than"):
        data.load_image_bytes(_png(Image.new("L", (200, 200))), max_pixels=10_000)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height (no pixel data): what a decompression bomb shows PIL."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IEND", b""))


def test_a_bomb_pil_refuses_is_named_with_one_limit_ours():
    """PIL refuses 400 M pixels while opening, naming its own limit; the message names the size and ours only."""
    with pytest.raises(ImageLoadError) as info:
        data.load_image_bytes(_png_header(20_000, 20_000))
    message = str(info.value)
    assert "400,000,000 pixels" in message and f"{data.MAX_IMAGE_PIXELS:,} allowed" in message
    assert str(Image.MAX_IMAGE_PIXELS) not in message and "DOS" not in message


def test_image_folder(tmp_path, default_lm):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (40, 40), (i * 100, 0, 0)).save(tmp_path / cls / f"{i}.png")
    ds = data.image_folder(tmp_path, default_lm.transform)
    x, y = ds[3]
    assert ds.classes == ["cat", "dog"] and x.shape == (3, 32, 32) and y == 1
    with pytest.raises(DataError, match="does not exist"):
        data.image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="ImageFolder"):
        data.image_folder(tmp_path / "empty")


def test_resolve_image(tmp_path):
    assert data.resolve_image(None).name == "chelsea"
    p = tmp_path / "a.png"
    Image.new("RGB", (5, 5)).save(p)
    assert data.resolve_image(str(p)).image.size == (5, 5)
    with pytest.raises(ImageLoadError, match="does not exist"):
        data.resolve_image(str(tmp_path / "missing.png"))


def test_cifar10_without_network_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, *a, **k):
            raise RuntimeError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DataError, match="CIFAR-10 could not be downloaded"):
        data.train_heldout("cifar10", cache_dir=tmp_path)


def test_split_and_zip_folder(tmp_path):
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for cls in ("a", "b"):
            for i in range(5):
                zf.writestr(f"root/{cls}/{i}.png", _png(Image.new("RGB", (9, 9), (i * 40, 0, 0))))
    folder = data.extract_image_folder_zip(buf.getvalue(), tmp_path / "x")
    assert folder.name == "root"
    train, held = data.train_heldout(str(folder))
    assert len(train) == 9 and len(held) == 1 and train.classes == ["a", "b"]
    with pytest.raises(DataError, match="not a valid zip"):
        data.extract_image_folder_zip(b"nope", tmp_path / "y")
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(DataError, match="unsafe path"):
        data.extract_image_folder_zip(evil.getvalue(), tmp_path / "z")


def test_a_data_spec_is_parsed_in_one_place(tmp_path):
    from nullviz.data import DataSpec

    assert [DataSpec.parse(s).kind for s in ("default", "digits", "cluttered", "cifar10")] == \
        ["default", "digits", "cluttered", "cifar10"]
    folder = DataSpec.parse(str(tmp_path))
    assert folder.kind == "folder" and folder.path == tmp_path and str(folder) == str(tmp_path)
    assert folder.class_count() == 0
    (tmp_path / "cat").mkdir(), (tmp_path / "dog").mkdir(), (tmp_path / ".hidden").mkdir()
    assert folder.class_count() == 2
    assert DataSpec.parse("digits").embedded and not DataSpec.parse("cifar10").embedded
    assert DataSpec.parse("cifar10").class_count() == 10 and DataSpec.parse("default").class_count() is None
    assert DataSpec.parse(str(tmp_path / "missing")).class_count() is None
    with pytest.raises(DataError, match="No data given"):
        DataSpec.parse("  ")


def test_data_sources_are_one_registry(tmp_path):
    """Every spec resolves to a registered source; loading goes through it; a new source is one class."""
    from nullviz.data import (DATA_SOURCES, EMBEDDED_DATA, DataSource, DataSpec, load_dataset, register_data_source,
                              synthesis_source_label, synthesis_sources, train_heldout)

    assert set(DATA_SOURCES) == {"digits", "cluttered", "cifar10", "folder"} and EMBEDDED_DATA == ("digits", "cluttered")
    assert all(src.label for src in DATA_SOURCES.values())
    assert DataSpec.parse("cluttered").source is DATA_SOURCES["cluttered"]
    assert DataSpec.parse(str(tmp_path)).source is DATA_SOURCES["folder"]
    with pytest.raises(DataError, match="own_data"):
        DataSpec.parse("default").source  # resolved per model first
    assert len(load_dataset("default")) == len(load_dataset("digits")) == 359  # 'default' alone: the digits
    train, held = train_heldout("digits")
    assert (len(train), len(held)) == (1438, 359)
    with pytest.raises(DataError, match="train_heldout"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="registered already"):
        register_data_source(type("Again", (DataSource,), {"name": "digits", "label": "again"}))
    # the synthesis sources are keys; what the page shows is apart
    assert synthesis_sources("digits") == ("own", "photos", "current") and synthesis_sources(None) == ("photos", "current")
    assert synthesis_source_label("own", "cluttered") == "cluttered scenes (train split)"
    assert synthesis_source_label("photos") == "sample photos"
