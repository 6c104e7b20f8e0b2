"""`POST /ocr` on real documents: text layers read exactly and never rendered, scanned pages OCRed,
`ocr=force`, and word boxes in the same page pixels whichever way a page was read."""

from collections.abc import Callable

import pypdfium2 as pdfium
import pytest
from fastapi.testclient import TestClient

from bench.documents import LayeredPage, baseline_pt, garbage_text_pdf, layered_pdf, page_lines, word_spans
from tests.ocr.conftest import needs_tessdata
from tests.ocr.samples import cer, needs_dejavu
from tests.ocr.test_ocr_api import post, run_worker_job

pytestmark = [pytest.mark.slow, needs_tessdata, needs_dejavu]

MakeClient = Callable[..., TestClient]
SCALE = 150 / 72
LINES = page_lines(10, seed=7)


def read(client: TestClient, data: bytes, **form: str) -> dict:
    response = post(client, data, "upload", **form)
    assert response.status_code == 200, response.text
    return response.json()


KINDS = ["text", "scan", "hidden", "under", "stamped", "text"]
MIXED = [LayeredPage(page_lines(6, seed=index), kind) for index, kind in enumerate(KINDS)]


def test_mixed_pdf_reads_text_layers_exactly_and_ocrs_the_rest(ocr_client: MakeClient) -> None:
    pages = MIXED
    body = read(ocr_client(), layered_pdf(pages), lang="es")
    assert body["page_count"] == 6
    results = body["pages"]
    assert [page["source"] for page in results] == ["text_layer", "ocr", "ocr", "ocr", "ocr", "text_layer"]
    assert [page["text_layer"] for page in results] == [
        "used",
        "absent",
        "hidden",
        "hidden",
        "sparse",
        "used",
    ]
    for page, result in zip(pages, results, strict=True):
        expected = "\n".join(page.lines)
        if result["source"] == "text_layer":
            assert result["text"] == expected and result["confidence"] == 1.0
        else:
            text = result["text"].replace("Página 3", "") if page.layer == "stamped" else result["text"]
            assert cer(expected, text) < 0.02, (page.layer, result["text"])
        assert (result["width"], result["height"]) == (1275, 1651)
        assert result["words"] is None


def test_text_layer_pages_are_never_rendered(monkeypatch: pytest.MonkeyPatch) -> None:
    """In the worker (here in-process): only the pages OCR reads are rasterised."""
    rendered: list[tuple[float, float]] = []
    render = pdfium.PdfPage.render

    def counting_render(self: pdfium.PdfPage, **options: object) -> pdfium.PdfBitmap:
        rendered.append(self.get_size())
        return render(self, **options)

    monkeypatch.setattr(pdfium.PdfPage, "render", counting_render)
    replies = run_worker_job(layered_pdf(MIXED), "pdf")
    pages = [reply["page"] for reply in replies if "page" in reply]
    assert [page["source"] for page in pages] == ["text_layer", "ocr", "ocr", "ocr", "ocr", "text_layer"]
    assert len(rendered) == 4 and replies[-1]["done"]
    rendered.clear()
    replies = run_worker_job(layered_pdf(MIXED), "pdf", force_ocr=True)
    assert len(rendered) == 6 and replies[-1]["done"]


def test_force_ocrs_a_text_layer_page(ocr_client: MakeClient) -> None:
    data = layered_pdf([LayeredPage(LINES[:5])])
    (page,) = read(ocr_client(), data, ocr="force")["pages"]
    assert (page["source"], page["text_layer"]) == ("ocr", "skipped")
    assert cer("\n".join(LINES[:5]), page["text"]) < 0.02


def test_a_garbage_text_layer_is_ocred_from_its_glyphs(ocr_client: MakeClient) -> None:
    (page,) = read(ocr_client(), garbage_text_pdf("INVOICE 2024 TOTAL DUE"), lang="en")["pages"]
    assert (page["source"], page["text_layer"]) == ("ocr", "garbage")
    assert cer("INVOICE 2024 TOTAL DUE", page["text"]) < 0.02, page["text"]


def _assert_boxes_match_the_layout(words: list[dict], lines: list[str], tolerance_px: float) -> None:
    expected = [
        (word, index, left, right)
        for index, line in enumerate(lines)
        for word, left, right in word_spans(line)
    ]
    assert [word["text"] for word in words] == [word for word, *_ in expected]
    for word, (_, line, left, right) in zip(words, expected, strict=True):
        x0, y0, x1, y1 = word["box"]
        assert abs(x0 - left * SCALE) <= tolerance_px and abs(x1 - right * SCALE) <= tolerance_px, word
        baseline = baseline_pt(line) * SCALE
        assert baseline - 12 * SCALE <= y0 < y1 <= baseline + 4 * SCALE, word
        assert 0 < word["confidence"] <= 1


def test_word_boxes_of_a_text_layer_and_of_ocr_are_in_the_same_pixels(ocr_client: MakeClient) -> None:
    lines = ["El informe trimestral muestra ventas.", "Los costes de envío subieron en marzo."]
    client = ocr_client()
    pdf = layered_pdf([LayeredPage(lines), LayeredPage(lines, "scan")])
    layer, scan = read(client, pdf, words="true")["pages"]
    assert (layer["source"], scan["source"]) == ("text_layer", "ocr")
    _assert_boxes_match_the_layout(layer["words"], lines, tolerance_px=4)
    _assert_boxes_match_the_layout(scan["words"], lines, tolerance_px=5)
    assert all(word["confidence"] == 1.0 for word in layer["words"])
    assert min(word["confidence"] for word in scan["words"]) > 0.5
    for a, b in zip(layer["words"], scan["words"], strict=True):
        assert all(abs(p - q) <= 5 for p, q in zip(a["box"], b["box"], strict=True)), (a, b)


def test_word_boxes_of_an_image_are_in_its_pixels(ocr_client: MakeClient) -> None:
    from bench.documents import encode, scanned_letter

    lines = ["Quarterly report for the board."]
    (page,) = read(ocr_client(), encode(scanned_letter(lines)), lang="en", words="true")["pages"]
    assert (page["source"], page["text_layer"], page["width"], page["height"]) == ("ocr", None, 1275, 1650)
    _assert_boxes_match_the_layout(page["words"], lines, tolerance_px=5)
