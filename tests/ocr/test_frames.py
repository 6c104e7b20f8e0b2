"""Images with several frames are read page by page, as PDFs are: a multi-page TIFF, an animated
WebP or PNG. `pages` selects them, OCR_MAX_PAGES bounds them; none is cut to its first page."""

import io
import time
import zlib
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bench.hostile_files import many_page_tiff
from service.ocr.images import frame_count, tiff_directories
from tests.ocr.conftest import needs_tessdata
from tests.ocr.samples import ENGLISH, cer, encode, text_page, tiff_of
from tests.ocr.test_ocr_api import assert_error, post

pytestmark = needs_tessdata

MakeClient = Callable[..., TestClient]
PAGES = [text_page([line], size=(1000, 120)) for line in ENGLISH]


def texts(response) -> dict[int, str]:
    assert response.status_code == 200, response.text
    return {page["page"]: page["text"] for page in response.json()["pages"]}


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("TIFF", {}), ("TIFF", {"compression": "group4"}), ("WEBP", {"lossless": True}), ("PNG", {})],
)
def test_each_frame_is_a_page_read_in_order(ocr_client: MakeClient, fmt: str, options: dict) -> None:
    pages = [page.convert("1") for page in PAGES] if options.get("compression") == "group4" else PAGES
    response = post(ocr_client(), tiff_of(pages, fmt, **options), lang="en")
    read = texts(response)
    assert response.json()["page_count"] == 3 and list(read) == [1, 2, 3]
    for number, line in enumerate(ENGLISH, 1):
        assert cer(line, read[number]) < 0.02, (number, read[number])


def test_pages_selects_frames(ocr_client: MakeClient) -> None:
    client = ocr_client()
    tiff = tiff_of(PAGES)
    response = post(client, tiff, pages="3,1", lang="en")
    read = texts(response)
    assert response.json()["page_count"] == 3 and list(read) == [1, 3]
    assert cer(ENGLISH[2], read[3]) < 0.02 and cer(ENGLISH[0], read[1]) < 0.02
    error = assert_error(post(client, tiff, pages="4"), 422, "invalid_input")
    assert "the TIFF has 3" in error["message"] and error["page_count"] == 3
    error = assert_error(post(client, encode(PAGES[0]), pages="2"), 422, "invalid_input")
    assert "the PNG has 1" in error["message"]


def test_more_frames_than_max_pages_are_refused_unless_selected(ocr_client: MakeClient) -> None:
    client = ocr_client(OCR_MAX_PAGES="2")
    tiff = tiff_of(PAGES)
    error = assert_error(post(client, tiff), 413, "too_large")
    assert "the TIFF has 3 pages; at most OCR_MAX_PAGES=2" in error["message"] and error["page_count"] == 3
    assert_error(post(client, tiff, pages="1-3"), 413, "too_large")
    assert list(texts(post(client, tiff, pages="2-3", lang="en"))) == [2, 3]


def test_a_3000_page_tiff_is_counted_not_cut(ocr_client: MakeClient) -> None:
    """The issue's attack: a 3,000-page TIFF (300 KB) was answered as its first page."""
    client = ocr_client()
    tiff = many_page_tiff(3000)
    started = time.monotonic()
    error = assert_error(post(client, tiff), 413, "too_large")
    assert error["page_count"] == 3000 and "select some with `pages`" in error["message"]
    assert time.monotonic() - started < 10
    response = post(client, tiff, pages="1,2999-3000")
    assert list(texts(response)) == [1, 2999, 3000] and response.json()["page_count"] == 3000
    assert all(page["unreadable"] for page in response.json()["pages"])


def test_counting_a_tiffs_pages_is_linear_and_ends_on_a_loop() -> None:
    tiff = many_page_tiff(30_000)  # 3 MB: Pillow's n_frames takes 6 s on it (quadratic)
    started = time.process_time()
    assert tiff_directories(tiff) == 30_000
    assert time.process_time() - started < 0.5
    assert tiff_directories(many_page_tiff(5, looping=True)) == 5
    assert tiff_directories(many_page_tiff(5)[:-50]) == 4  # the last directory is cut off


def test_a_jpeg_is_one_page_whatever_its_mpo_images() -> None:
    """An MPO (a camera's JPEG with previews or a stereo pair): its primary image is the page."""
    buffer = io.BytesIO()
    photo = Image.new("RGB", (400, 300), "white")
    photo.save(buffer, "MPO", save_all=True, append_images=[photo.resize((200, 150))])
    image = Image.open(io.BytesIO(buffer.getvalue()), formats=["JPEG"])
    assert getattr(image, "n_frames", 1) == 2 and frame_count(buffer.getvalue(), image) == 1


def test_a_frame_over_the_pixel_limit_is_refused_before_it_decodes(ocr_client: MakeClient) -> None:
    """Every frame is checked from its own header, not just the first."""
    tiff = tiff_of([PAGES[0], Image.new("L", (5000, 5000), 255)], compression="tiff_lzw")
    client = ocr_client(OCR_MAX_PIXELS="4000000")
    error = assert_error(post(client, tiff), 413, "too_large")
    assert error["width"] == 5000 and "OCR_MAX_PIXELS" in error["message"]
    assert list(texts(post(client, tiff, pages="1", lang="en"))) == [1]


def lying_apng(claimed: int) -> bytes:
    """A two-frame APNG whose animation control chunk claims `claimed` frames."""
    data = tiff_of(PAGES[:2], "PNG")
    at = data.index(b"acTL")
    body = claimed.to_bytes(4, "big") + data[at + 8 : at + 12]
    chunk = b"acTL" + body
    return data[:at] + chunk + zlib.crc32(chunk).to_bytes(4, "big") + data[at + 16 :]


def test_an_apng_that_claims_more_frames_than_it_has(ocr_client: MakeClient) -> None:
    client = ocr_client()
    error = assert_error(post(client, lying_apng(2**31 - 1)), 413, "too_large")
    assert error["page_count"] == 2**31 - 1 and "the PNG has" in error["message"]
    assert list(texts(post(client, lying_apng(5), pages="1-2", lang="en"))) == [1, 2]
    error = assert_error(post(client, lying_apng(5), pages="3"), 422, "undecodable_file")
    assert "page 3 of the PNG" in error["message"]


def test_a_many_frame_webp_is_counted_from_its_header(ocr_client: MakeClient) -> None:
    frames = [Image.new("L", (64, 64), shade) for shade in range(0, 250, 1)] * 4  # 1,000 frames
    webp = tiff_of(frames, "WEBP", lossless=True)
    started = time.monotonic()
    error = assert_error(post(ocr_client(), webp), 413, "too_large")
    assert error["page_count"] == 1000 and "the WebP has 1000 pages" in error["message"]
    assert time.monotonic() - started < 10
