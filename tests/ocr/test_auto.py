"""`lang=auto` on the OCR routes: one several-language engine reads the pages, then each page's
sentiment is read by the model of the language detected in its text (`/analyze`'s auto path).

The routes' tests run the OCR worker and are `slow`; the checks of the form, the settings and the
language data lookup are not."""

import json
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bench.documents import LANG_LINES, encode, pdf_of, text_page
from bench.server import multipart
from service.exceptions import ModelUnavailable
from service.ocr import tessdata
from service.ocr.config import OcrSettings, get_ocr_settings
from service.ocr.tessdata import resolve_tessdata
from service.sentiment import service
from service.sentiment.analyzer import Analyzer
from tests.ocr.conftest import needs_auto_tessdata
from tests.ocr.samples import needs_dejavu
from tests.sentiment.fakes import LABELS, FakeModel, fake_probas, install_weighted_models
from tests.support import app_client, needs_minilm

FRENCH = [
    "Nous avons passé une soirée magnifique avec nos amis au restaurant.",
    "Le service était rapide et les plats étaient vraiment délicieux.",
]
LANGS = ("es", "en", "it", "pt")

Client = tuple[TestClient, dict[str, FakeModel]]


def page(lines: list[str]) -> Image.Image:
    return text_page(lines, size=(1275, 60 + 50 * len(lines)))


def seen(model: FakeModel) -> list[str]:
    return [text for call in model.calls for text in call]


def ocr(client: TestClient, data: bytes, name: str = "upload", **form: str):
    return client.post("/ocr", files={"file": (name, data)}, data=form)


@pytest.fixture
def per_lang(make_client, monkeypatch, tmp_path) -> Iterator[Callable[..., Client]]:
    """The whole app, its sentiment models replaced by one fake per language (each records what it
    read), the OCR settings read afresh."""

    def make(models: dict[str, FakeModel] | None = None) -> Client:
        models = models or {lang: FakeModel() for lang in LANGS}
        monkeypatch.setattr(
            service,
            "create_analyzer",
            lambda task, lang, source, backend, threads: Analyzer(models[lang], task, lang, backend),
        )
        get_ocr_settings.cache_clear()
        settings = {"BACKEND": "torch", "MODEL_SENTIMENT_ES": str(tmp_path), "MEMORY_BUDGET_MB": "8192"}
        return make_client(**settings), models

    yield make
    get_ocr_settings.cache_clear()


# The form, the settings, the language data


def test_a_bad_lang_is_a_422_that_lists_what_is_accepted(make_client) -> None:
    client = make_client()
    response = ocr(client, encode(Image.new("L", (64, 64), 255)), lang="fr")
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    for lang in ("'es'", "'en'", "'it'", "'pt'", "'auto'"):
        assert lang in message, message


@pytest.mark.parametrize(
    "form", [{"fallback": "true", "lang": "es", "analyze": "true"}, {"fallback": "true", "lang": "auto"}]
)
def test_fallback_is_refused_unless_lang_auto_s_sentiment_is_asked(make_client, form: dict) -> None:
    response = ocr(make_client(), encode(Image.new("L", (64, 64), 255)), **form)
    assert response.status_code == 422
    assert "fallback" in response.json()["error"]["message"]


def test_auto_reads_with_the_configured_languages_in_their_order(monkeypatch) -> None:
    monkeypatch.delenv("OCR_AUTO_LANGS", raising=False)
    assert OcrSettings().tesseract_code("auto") == "spa+ita+por"
    assert OcrSettings().tesseract_code("pt") == "por"
    assert OcrSettings(auto_langs=" en, es ").tesseract_code("auto") == "eng+spa"
    for bad in ("", "es,fr", "es,es"):
        with pytest.raises(ValueError, match="OCR_AUTO_LANGS"):
            OcrSettings(auto_langs=bad)


def test_a_several_language_engine_needs_all_its_data_in_one_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, codes in ((first, ("spa", "ita")), (second, ("spa", "ita", "por"))):
        folder.mkdir()
        for code in codes:
            (folder / f"{code}.traineddata").write_bytes(b"x")

    def searched(*folders: Path) -> None:
        monkeypatch.setattr("service.ocr.tessdata.candidate_dirs", lambda settings: list(folders))

    searched(first, second)
    assert resolve_tessdata("spa+ita") == first
    assert resolve_tessdata("spa+ita+por") == second  # the first that holds all three
    searched(first)
    with pytest.raises(ModelUnavailable, match=r"por\.traineddata is not installed: .*install por"):
        resolve_tessdata("spa+ita+por")
    (second / "spa.traineddata").unlink()
    (second / "ita.traineddata").unlink()
    searched(first, second)
    with pytest.raises(ModelUnavailable, match="not in one directory"):
        resolve_tessdata("spa+ita+por")


def test_auto_without_its_languages_data_is_a_503_naming_each_install(
    make_client, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "spa.traineddata").write_bytes(b"x")
    monkeypatch.setattr(tessdata, "pypi_dir", lambda: tmp_path)
    monkeypatch.setattr(tessdata, "DEBIAN_DIRS", ())
    monkeypatch.setenv("OCR_TESSDATA", str(tmp_path))
    get_ocr_settings.cache_clear()
    # A budget too small for the engine: the missing data is said first, nothing is unloaded for it.
    response = ocr(make_client(MEMORY_BUDGET_MB="64"), encode(Image.new("L", (64, 64), 255)), lang="auto")
    get_ocr_settings.cache_clear()
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "ita.traineddata, por.traineddata is not installed" in message
    assert "install ita" in message and "install por" in message


# The routes (the OCR worker reads real pages)


@pytest.mark.slow
@needs_auto_tessdata
@needs_dejavu
def test_each_page_s_sentiment_is_read_by_its_own_language_s_model(per_lang) -> None:
    client, models = per_lang()
    spanish = ocr(client, encode(page(LANG_LINES["es"])), "carta.png", lang="auto", analyze="true")
    english = ocr(
        client,
        encode(page(LANG_LINES["en"]).convert("RGB"), "JPEG"),
        "letter.jpg",
        lang="auto",
        analyze="true",
    )
    for response, lang in ((spanish, "es"), (english, "en")):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["lang"] == "auto"
        (read,) = body["pages"]
        sentiment = read["sentiment"]
        assert (sentiment["lang"], sentiment["lang_source"]) == (lang, "detected")
        assert sentiment["lang_confidence"] > 0.9
        assert sentiment["probas"] == pytest.approx(dict(zip(LABELS, fake_probas(read["text"]), strict=True)))
        # The same answer /analyze gives for the text read.
        alone = client.post("/analyze", json={"text": read["text"], "lang": "auto"}).json()
        assert {
            key: alone[key] for key in ("label", "probas", "lang", "lang_confidence", "lang_source")
        } == sentiment
        assert seen(models[lang]).count(read["text"]) == 2  # the page's, then /analyze's
    assert not seen(models["it"]) and not seen(models["pt"])
    loaded = {entry["key"] for entry in client.get("/memory").json()["loaded"]}
    assert {"ocr:spa+ita+por", "language:detector", "sentiment:es", "sentiment:en"} <= loaded


@pytest.mark.slow
@needs_auto_tessdata
@needs_dejavu
def test_a_mixed_pdf_each_page_its_language_and_pages_that_cannot_be_told_their_own_error(per_lang) -> None:
    client, models = per_lang()
    pages = [page(LANG_LINES[lang]) for lang in ("pt", "es", "it", "en")] + [page(["OK"]), page(FRENCH)]
    pdf = pdf_of([*pages, Image.new("L", (1275, 200), 255)])
    response = ocr(client, pdf, "mixed.pdf", lang="auto", analyze="true")
    assert response.status_code == 200, response.text
    read = response.json()["pages"]
    assert [p["page"] for p in read] == [1, 2, 3, 4, 5, 6, 7]
    assert [p["sentiment"]["lang"] for p in read[:4]] == ["pt", "es", "it", "en"]
    for lang, result in zip(("pt", "es", "it", "en"), read[:4], strict=True):
        assert seen(models[lang]) == [result["text"]]  # its own model only, once
    assert read[4]["sentiment"]["error"]["code"] == "too_short"
    assert read[5]["sentiment"]["error"] == {
        "code": "unknown_language",
        "message": read[5]["sentiment"]["error"]["message"],
        "detected": "fr",
    }
    assert read[6]["unreadable"] and read[6]["sentiment"] is None  # a blank page: nothing to analyze

    response = ocr(client, pdf, "mixed.pdf", lang="auto", analyze="true", fallback="true")
    read = response.json()["pages"]
    assert [(p["sentiment"]["lang"], p["sentiment"]["lang_source"]) for p in read[4:6]] == [
        ("es", "fallback"),
        ("es", "fallback"),
    ]
    assert {read[4]["text"], read[5]["text"]} <= set(seen(models["es"]))  # DEFAULT_LANG's model read them


@pytest.mark.slow
@needs_auto_tessdata
@needs_dejavu
def test_a_batch_under_auto_each_file_s_pages_by_their_own_models(per_lang) -> None:
    client, models = per_lang()
    files = [
        ("file", ("nota.png", encode(page(LANG_LINES["es"])))),
        ("file", ("broken.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage")),
        ("file", ("relatorio.pdf", pdf_of([page(LANG_LINES["it"]), page(LANG_LINES["pt"])]))),
    ]
    response = client.post("/ocr/batch", files=files, data={"lang": "auto", "analyze": "true"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["lang"] == "auto"
    spanish, broken, mixed = body["files"]
    assert spanish["pages"][0]["sentiment"]["lang"] == "es"
    assert broken["error"]["code"] == "undecodable_file"
    assert [p["sentiment"]["lang"] for p in mixed["pages"]] == ["it", "pt"]
    assert seen(models["pt"]) == [mixed["pages"][1]["text"]] and not seen(models["en"])


@pytest.mark.slow
@needs_auto_tessdata
@needs_dejavu
def test_without_analyze_auto_only_reads_with_the_several_language_engine(per_lang) -> None:
    client, models = per_lang()
    response = ocr(client, pdf_of([page(LANG_LINES["it"])]), lang="auto")
    assert response.status_code == 200, response.text
    (read,) = response.json()["pages"]
    assert "città" in read["text"] and read["sentiment"] is None
    assert not any(seen(model) for model in models.values())
    loaded = {entry["key"] for entry in client.get("/memory").json()["loaded"]}
    assert "ocr:spa+ita+por" in loaded and "language:detector" not in loaded


@pytest.mark.slow
@needs_auto_tessdata
@needs_dejavu
def test_pages_needing_more_models_than_the_budget_holds_are_503_never_half_an_answer(
    per_lang, monkeypatch
) -> None:
    """The pages' models go through /analyze's all-or-none admission: with room for one language
    model, a document in two languages is refused whole and nothing is unloaded for it."""
    models = {lang: FakeModel() for lang in LANGS}
    loads = install_weighted_models(monkeypatch, models, budget_mb=200, admission_wait_s=5)
    client, _ = per_lang(models)
    spanish = pdf_of([page(LANG_LINES["es"])])
    assert ocr(client, spanish, lang="auto", analyze="true").status_code == 200
    response = ocr(
        client, pdf_of([page(LANG_LINES["es"]), page(LANG_LINES["en"])]), lang="auto", analyze="true"
    )
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "over_memory_budget"
    assert int(response.headers["Retry-After"]) > 0
    assert loads == ["es"] and not seen(models["en"])


@pytest.mark.slow
@needs_auto_tessdata
@needs_dejavu
@needs_minilm
def test_real_models_answer_each_page_as_analyze_answers_its_text(onnx_minilm) -> None:
    """The exported model under each language's name: a page's sentiment is /analyze's for its text."""
    env = {f"MODEL_SENTIMENT_{lang.upper()}": str(onnx_minilm) for lang in LANGS}
    get_ocr_settings.cache_clear()
    with app_client(BACKEND="onnx", MEMORY_BUDGET_MB="8192", PREPACKED="false", **env) as client:
        pdf = pdf_of([page(LANG_LINES[lang]) for lang in ("en", "pt", "es", "it")])
        response = ocr(client, pdf, lang="auto", analyze="true")
        assert response.status_code == 200, response.text
        read = response.json()["pages"]
        assert [p["sentiment"]["lang"] for p in read] == ["en", "pt", "es", "it"]
        texts = [p["text"] for p in read]
        alone = client.post("/analyze", json={"texts": texts, "lang": "auto"}).json()["results"]
        for result, expected in zip(read, alone, strict=True):
            assert result["sentiment"]["probas"] == pytest.approx(expected["probas"], abs=1e-5)
            assert result["sentiment"]["lang_confidence"] == expected["lang_confidence"]


@pytest.mark.slow
@needs_auto_tessdata
@needs_dejavu
@needs_minilm
def test_ocr_auto_beside_mixed_batches_in_a_512_mb_cgroup(onnx_minilm_int8, tmp_path: Path) -> None:
    """The real server in a real 512 MB cgroup, one exported model per language (each its own files,
    so its own prepacked variant): OCR of four-language PDFs under lang=auto, beside concurrent
    /analyze auto batches, all answered whole, nothing OOM-killed, the cgroup's peak under the limit."""
    from tests.ops.test_soak import memory_cgroup
    from tests.support import real_server

    env = {}
    for lang in LANGS:
        shutil.copytree(onnx_minilm_int8, tmp_path / lang, ignore=shutil.ignore_patterns("prepacked"))
        env[f"MODEL_SENTIMENT_{lang.upper()}"] = str(tmp_path / lang)
    pdf = pdf_of([page(LANG_LINES[lang]) for lang in ("it", "en", "pt", "es")] + [page(FRENCH)])
    body, content_type = multipart({"lang": "auto", "analyze": "true"}, "mixed.pdf", pdf, "application/pdf")
    batches = [[LANG_LINES[lang][0] for lang in langs] for langs in (LANGS, ("pt", "it"), ("en", "es"))] * 3
    with (
        memory_cgroup(512) as cgroup,
        real_server(tmp_path, cgroup=cgroup.path, BACKEND="onnx", **env) as server,
    ):
        ocr_answers: list[tuple[int, dict]] = []
        batch_answers: list[int] = []

        def read() -> None:
            response = server.request("POST", "/ocr", body, {"Content-Type": content_type}, timeout=300)
            ocr_answers.append((response.status, response.json()))

        def send(texts: list[str]) -> None:
            payload = json.dumps({"texts": texts, "lang": "auto"}).encode()
            response = server.request(
                "POST", "/analyze", payload, {"Content-Type": "application/json"}, timeout=300
            )
            batch_answers.append(response.status)

        threads = [threading.Thread(target=read) for _ in range(3)]
        threads += [threading.Thread(target=send, args=(texts,)) for texts in batches]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(360)
        assert batch_answers == [200] * len(batches)
        assert [status for status, _ in ocr_answers] == [200] * 3, ocr_answers
        for _, answer in ocr_answers:
            sentiments = [p["sentiment"] for p in answer["pages"]]
            assert [s.get("lang") for s in sentiments] == ["it", "en", "pt", "es", None]
            assert sentiments[4]["error"]["detected"] == "fr"
        assert cgroup.oom_kills() == 0
        peak = cgroup.peak_mb()
        assert peak is None or peak <= 512
        memory = json.loads(server.request("GET", "/memory").body)
        costs = {m["key"]: m.get("cost_mb") for m in memory["loaded"]}
        print(f"cgroup peak {peak} MB; loaded: {costs}")
