"""The OCR modules one at a time: page selection, rendering limits, decoding, language data."""

import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
from PIL import Image

from bench.hostile_files import looping_page_tree_pdf
from service.exceptions import BadInput, ModelUnavailable, TooLarge
from service.ocr import tessdata
from service.ocr.config import OcrSettings
from service.ocr.errors import Undecodable, UnsupportedMedia
from service.ocr.images import open_image, prepare_image
from service.ocr.pdf import PdfPages, parse_pages, render_scale
from service.ocr.uploads import check_kind, sniff_kind
from tests.ocr.samples import blank_pdf, encode, pdf_of, png_header_only, text_page
from tests.support import ROOT


def renderer_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "ocr-pdf-render"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [(None, [1, 2, 3, 4, 5]), ("1-3,5", [1, 2, 3, 5]), (" 5 , 2-3 ", [2, 3, 5]), ("2,2,1-2", [1, 2])],
)
def test_parse_pages(spec: str | None, expected: list[int]) -> None:
    assert parse_pages(spec, page_count=5, max_pages=5) == expected


@pytest.mark.parametrize(
    ("spec", "page_count", "error"),
    [
        ("0", 5, BadInput),
        ("4-2", 5, BadInput),
        ("6", 5, BadInput),
        ("1-x", 5, BadInput),
        ("1-999999", 10**6, TooLarge),  # refused from the range's length, never materialised
        ("1-3,5-7", 10, TooLarge),
        (None, 6, TooLarge),
    ],
)
def test_parse_pages_refuses(spec: str | None, page_count: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_pages(spec, page_count=page_count, max_pages=5)


def test_render_scale_caps_the_pixels_of_any_page() -> None:
    assert render_scale(612, 792, dpi=150, page_pixels=2_250_000) == pytest.approx(150 / 72)
    scale = render_scale(200 * 72, 200 * 72, dpi=150, page_pixels=2_250_000)
    assert (200 * 72 * scale) ** 2 <= 2_250_000 * 1.0001


def test_pdf_pages_render_within_budget_and_stop_early() -> None:
    settings = OcrSettings(page_pixels=500_000, min_dpi=1).job_limits()
    with PdfPages(blank_pdf(200 * 72, 100 * 72, pages=5), None, settings) as pdf:
        assert (pdf.page_count, pdf.numbers) == (5, [1, 2, 3, 4, 5])
        page = next(iter(pdf))
        width, height = page.image.size
        assert page.number == 1 and page.image.mode == "L" and width * height <= 500_000
    assert not renderer_threads()


def test_pdf_pages_refuse_oversized_embedded_images() -> None:
    pdf = pdf_of([Image.new("L", (400, 300), 255)])
    with (
        pytest.raises(TooLarge, match="OCR_MAX_PIXELS"),
        PdfPages(pdf, None, OcrSettings(max_pixels=100_000).job_limits()),
    ):
        pass
    with PdfPages(pdf, None, OcrSettings().job_limits()) as pages:
        assert pages.numbers == [1]  # an image under the cap: the page is read
    assert not renderer_threads()


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\x89PNG\r\n\x1a\n....", "png"),
        (b"\xff\xd8\xff\xe0....", "jpeg"),
        (b"II*\x00....", "tiff"),
        (b"MM\x00*....", "tiff"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
        (b"%PDF-1.7\n", "pdf"),
        (b"\xef\xbb\xbf\n%PDF-1.4\n", "pdf"),
        (b"GIF89a....", None),
        (b"hello", None),
    ],
)
def test_sniff_kind(data: bytes, kind: str | None) -> None:
    assert sniff_kind(data) == kind


def test_check_kind_trusts_content_over_a_generic_type() -> None:
    png = encode(Image.new("L", (8, 8)))
    assert check_kind(png, None) == check_kind(png, "application/octet-stream") == "png"
    assert check_kind(png, "image/png; charset=binary") == "png"
    with pytest.raises(UnsupportedMedia, match="declared as image/jpeg but its content is PNG"):
        check_kind(png, "image/jpeg")


@pytest.mark.parametrize("side", [7_000, 20_000])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_refused_from_its_header(side: int) -> None:
    with pytest.raises(TooLarge, match="OCR_MAX_PIXELS=40,000,000"):
        open_image(png_header_only(side, side), "png", OcrSettings().job_limits())


def test_sixteen_bit_and_rotated_images_become_upright_8_bit() -> None:
    settings = OcrSettings().job_limits()
    deep = Image.new("I;16", (40, 20), 40_000)
    prepared = prepare_image(open_image(encode(deep), "png", settings), settings)
    assert prepared.mode == "L" and prepared.getpixel((0, 0)) == 40_000 // 256

    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    photo = encode(Image.new("RGB", (60, 30), "white"), "JPEG", exif=exif.tobytes())
    assert prepare_image(open_image(photo, "jpeg", settings), settings).size == (30, 60)


def test_large_images_are_downscaled_to_max_side() -> None:
    settings = OcrSettings(max_side=500).job_limits()
    image = open_image(encode(text_page(["x"], size=(2000, 1000)), "JPEG"), "jpeg", settings)
    assert image.size == (500, 250)  # libjpeg decodes at 1/4 scale
    assert prepare_image(image, settings).size == (500, 250)
    png = open_image(encode(text_page(["x"], size=(2000, 1000))), "png", settings)
    assert prepare_image(png, settings).size == (500, 250)


def _npm_tarball(traineddata: bytes) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        member = gzip.compress(traineddata)
        info = tarfile.TarInfo("package/4.0.0_best_int/xyz.traineddata.gz")
        info.size = len(member)
        archive.addfile(info, io.BytesIO(member))
    data = buffer.getvalue()
    return data, "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def test_tessdata_is_extracted_only_from_the_pinned_tarball(tmp_path: Path) -> None:
    tarball, integrity = _npm_tarball(b"model bytes")
    source = tessdata.NpmTessdata("@x/xyz", "1.0.0", "package/4.0.0_best_int/xyz.traineddata.gz", integrity)
    tessdata.extract_traineddata(tarball, source, tmp_path / "xyz.traineddata")
    assert (tmp_path / "xyz.traineddata").read_bytes() == b"model bytes"
    with pytest.raises(ValueError, match="integrity"):
        tessdata.extract_traineddata(tarball + b"\0", source, tmp_path / "other.traineddata")
    assert not (tmp_path / "other.traineddata").exists()


def test_missing_tessdata_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tessdata, "pypi_dir", lambda: tmp_path / "pypi")
    monkeypatch.setattr(tessdata, "DEBIAN_DIRS", ())
    monkeypatch.setenv("OCR_TESSDATA", str(tmp_path))
    settings = OcrSettings()
    with pytest.raises(ModelUnavailable, match=r"python -m service\.ocr\.tessdata install spa") as raised:
        tessdata.resolve_tessdata("spa", settings)
    assert raised.value.details["searched"] == [str(tmp_path), str(tmp_path / "pypi")]
    (tmp_path / "spa.traineddata").write_bytes(b"x")
    assert tessdata.resolve_tessdata("spa", settings) == tmp_path


def test_a_page_tree_that_contains_itself_is_undecodable() -> None:
    with (
        pytest.raises(Undecodable, match="cannot be read"),
        PdfPages(looping_page_tree_pdf(), None, OcrSettings().job_limits()),
    ):
        pass
    assert not renderer_threads()


def test_the_worker_process_loads_no_settings_stack() -> None:
    """The worker inherits the server's pinned environment, so it never imports pydantic-settings,
    pydantic or FastAPI: they would add ~25 MB to a process whose memory the budget counts."""
    code = "import json, sys, service.ocr.worker; print(json.dumps(sorted(sys.modules)))"
    env = {**os.environ}  # pinned by `import service` in this process, as in the server
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    modules = set(json.loads(result.stdout))
    assert {"PIL", "pypdfium2", "tesserocr"} <= modules
    assert not {"fastapi", "pydantic", "pydantic_settings", "service.config"} & modules
