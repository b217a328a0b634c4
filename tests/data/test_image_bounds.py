"""No image, whatever its header says, makes the server allocate much: strips refused before decoding, large images
downscaled right after, and the page told what was done."""

import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from conftest import ROOT
from nullviz.core.errors import DataError, ImageLoadError
from nullviz.data import downscale_note, extract_image_folder_zip, load_image_bytes
from nullviz.data.images import MAX_ASPECT_RATIO, MAX_IMAGE_SIDE


def png(size, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@pytest.mark.parametrize("size", [(1, 60_000), (1_000_000, 1), (2_100, 200)])
def test_strips_are_refused_from_their_header(size):
    data = png(size, "1")
    assert len(data) < 5_000  # a few KB that would have cost gigabytes in the model's resize
    with pytest.raises(ImageLoadError, match=r"images up to 10:1 are accepted"):
        load_image_bytes(data)


def test_large_images_are_downscaled_and_say_so():
    image = load_image_bytes(png((5000, 4000)))
    assert image.size == (MAX_IMAGE_SIDE, 1638)
    assert downscale_note(image) == ("Downscaled from 5,000×4,000 to 2,048×1,638 pixels (at most 2,048 on the "
                                     "long side) before anything else.")
    buf = io.BytesIO()
    Image.new("RGB", (6000, 3000), (200, 10, 10)).save(buf, format="JPEG")
    jpeg = load_image_bytes(buf.getvalue())
    assert max(jpeg.size) == MAX_IMAGE_SIDE and downscale_note(jpeg).startswith("Downscaled from 6,000×3,000")
    small = load_image_bytes(png((300, 200)))
    assert small.size == (300, 200) and downscale_note(small) is None
    assert load_image_bytes(png((2000, 200))).size == (2000, 200)  # 10:1 exactly is accepted


def test_image_folder_zips_refuse_strips():
    buf = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("cat/strip.png", png((1, 60_000), "1"))
    with pytest.raises(DataError, match="strip.png.*10:1"):
        extract_image_folder_zip(buf.getvalue(), "/tmp/nullviz-test-strip-zip")


PEAK_PROBE = r"""
import io, json, resource, sys
from PIL import Image
from nullviz.data import load_image_bytes
from nullviz.models import load_model
lm = load_model("cluttered", device="cpu")
lm.preprocess(Image.new("RGB", (64, 64)))
size = tuple(int(v) for v in sys.argv[1].split("x"))
buf = io.BytesIO(); Image.new("1" if min(size) == 1 else "RGB", size).save(buf, format="PNG")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    lm.preprocess(load_image_bytes(buf.getvalue()))
    outcome = "accepted"
except Exception as exc:
    outcome = type(exc).__name__
print(json.dumps({"outcome": outcome, "grew_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
"""


def peak_growth(size: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PEAK_PROBE, size], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("size, outcome", [("1x60000", "ImageLoadError"), ("2048x205", "accepted")])
def test_a_strip_and_the_most_elongated_image_kept_grow_the_process_little(size, outcome):
    """The 1×60,000 strip cost +1.1 GB in the model's resize before it was refused from its header."""
    result = peak_growth(size)
    assert result["outcome"] == outcome and result["grew_mb"] < 100, result
