"""`lang: "auto"`: each text read by the model of its own language, on /analyze and /analyze/file;
texts whose language cannot be told; several models in one request under a small budget."""

import json
import shutil
import threading
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from bench.langid import own_texts
from service.sentiment import service
from service.sentiment.analyzer import Analyzer
from service.sentiment.language import Detector
from tests.sentiment.fakes import LABELS, FakeModel, fake_probas, install_weighted_models
from tests.support import configured, needs_data, needs_minilm, read_labelled

ES = "¡Qué buen día hace hoy, me encanta esta ciudad!"
EN = "What a lovely day, I really love this city"
IT = "Che bella giornata oggi, adoro questa città"
PT = "Que dia lindo hoje, eu adoro essa cidade"
FR = "Je ne sais pas quoi faire ce soir avec mes amis"
SHORT = "lol 😂"
ES2 = "No me gustó nada la película de anoche"
EN2 = "The service at this restaurant was terrible"


def expected(text: str) -> dict[str, float]:
    return dict(zip(LABELS, fake_probas(text), strict=True))


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector()


@pytest.fixture
def per_lang(fake_app, monkeypatch) -> Callable[..., tuple[TestClient, dict[str, FakeModel]]]:
    """The app with one fake model per language (each records what it was asked)."""

    def make(**env: str) -> tuple[TestClient, dict[str, FakeModel]]:
        models = {lang: FakeModel() for lang in ("es", "en", "it", "pt")}
        client = fake_app(FakeModel(), **env)
        monkeypatch.setattr(
            service,
            "create_analyzer",
            lambda task, lang, source, backend, threads: Analyzer(models[lang], task, lang, backend),
        )
        return client, models

    return make


def seen(model: FakeModel) -> list[str]:
    return [text for call in model.calls for text in call]


# The detector


def test_detector_tells_each_language_of_the_project_s_own_texts(detector):
    texts = [(lang, text) for lang, text in own_texts() if lang in ("it", "pt")]
    right = sum(detector.detect(text, ("es", "en", "it", "pt")).lang == lang for lang, text in texts)
    assert right >= 0.95 * len(texts)


@needs_data
def test_detector_meets_the_accuracy_goals_on_the_shared_tweets(detector):
    tweets = [
        (lang, text)
        for name, lang in (("xlmt_spanish", "es"), ("xlmt_english", "en"))
        for text in read_labelled(name)[0]
    ]
    right = [detector.detect(text, ("es", "en", "it", "pt")).lang == lang for lang, text in tweets]
    assert sum(right) >= 0.97 * len(tweets)
    short = [ok for ok, (_lang, text) in zip(right, tweets, strict=True) if len(text) < 40]
    assert len(short) > 100 and sum(short) >= 0.95 * len(short)


def test_detector_refuses_short_texts_and_other_languages_and_never_guesses(detector):
    for text in ("ok", "lol", "👍👍", "@user #tbt", "kkkk"):
        found = detector.detect(text, ("es", "en", "it", "pt"))
        assert (found.lang, found.error) == (None, "too_short")
    found = detector.detect(FR, ("es", "en", "it", "pt"))
    assert (found.lang, found.error, found.other) == (None, "unknown_language", "fr")
    assert "fr" in found.message()
    # Among one task's languages only: Italian is no answer when only es/en have a model.
    found = detector.detect(IT, ("es", "en"))
    assert found.lang is None and found.error == "unknown_language"


def test_detector_reads_past_mentions_links_and_capitals(detector):
    found = detector.detect("@juan @maria https://t.co/xyz QUE BUEN PARTIDO HICIERON AYER", ("es", "en"))
    assert found.lang == "es" and found.confidence > 0.9


# /analyze


def test_a_mixed_batch_goes_text_by_text_to_its_own_model_in_input_order(per_lang):
    client, models = per_lang()
    texts = [PT, ES, EN, IT, EN2, ES2]
    response = client.post("/analyze", json={"texts": texts, "lang": "auto"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["task"], body["lang"]) == ("sentiment", "auto")
    assert [r["lang"] for r in body["results"]] == ["pt", "es", "en", "it", "en", "es"]
    for text, result in zip(texts, body["results"], strict=True):
        assert result["probas"] == pytest.approx(expected(text))
        assert result["lang_source"] == "detected" and 0.5 <= result["lang_confidence"] <= 1
    assert {lang: len(seen(model)) for lang, model in models.items()} == {"es": 2, "en": 2, "it": 1, "pt": 1}
    assert seen(models["it"]) == [IT]


def test_one_text_answers_with_the_language_it_was_read_in(per_lang):
    client, models = per_lang()
    body = client.post("/analyze", json={"text": IT, "lang": "auto"}).json()
    assert (body["task"], body["lang"], body["lang_source"]) == ("sentiment", "it", "detected")
    assert body["probas"] == pytest.approx(expected(IT))
    assert seen(models["it"]) == [IT] and not seen(models["es"])


def test_texts_that_cannot_be_told_get_their_own_error_in_a_batch(per_lang):
    client, models = per_lang()
    response = client.post("/analyze", json={"texts": [ES, SHORT, FR, EN], "lang": "auto"})
    assert response.status_code == 200
    results = response.json()["results"]
    assert results[0]["lang"] == "es" and results[3]["lang"] == "en"
    assert results[1] == {
        "error": {"code": "too_short", "message": results[1]["error"]["message"], "detected": None}
    }
    assert results[2]["error"]["code"] == "unknown_language" and results[2]["error"]["detected"] == "fr"
    assert "label" not in results[1] and "label" not in results[2]
    assert sum(len(seen(model)) for model in models.values()) == 2  # never a silent guess


def test_one_text_that_cannot_be_told_is_a_422(per_lang):
    client, _ = per_lang()
    for text, code in ((SHORT, "too_short"), (FR, "unknown_language")):
        response = client.post("/analyze", json={"text": text, "lang": "auto"})
        assert response.status_code == 422
        assert response.json()["error"]["code"] == code


def test_fallback_reads_them_with_default_lang_s_model_and_says_so(per_lang):
    client, models = per_lang(DEFAULT_LANG="en")
    body = client.post("/analyze", json={"texts": [SHORT, FR, IT], "lang": "auto", "fallback": True}).json()
    assert [(r["lang"], r["lang_source"]) for r in body["results"]] == [
        ("en", "fallback"),
        ("en", "fallback"),
        ("it", "detected"),
    ]
    assert body["results"][0]["lang_confidence"] == 0.0  # too short: no evidence for any language
    assert body["results"][1]["probas"] == pytest.approx(expected(FR))
    assert len(seen(models["en"])) == 2


def test_fallback_is_refused_without_auto(per_lang):
    client, _ = per_lang()
    response = client.post("/analyze", json={"text": ES, "lang": "es", "fallback": True})
    assert response.status_code == 422 and "fallback" in response.json()["error"]["message"]


def test_auto_detects_among_the_task_s_languages_only(per_lang):
    client, _ = per_lang()
    # ner has es and en models: Italian is a per-text error, not a guess.
    body = client.post("/analyze", json={"texts": [IT], "task": "sentiment", "lang": "auto"}).json()
    assert body["results"][0]["lang"] == "it"
    assert service.task_langs("ner") == ("es", "en")
    assert service.task_langs("targeted_sentiment") == ("es",)


def test_a_fixed_lang_answer_is_unchanged(per_lang):
    client, _ = per_lang()
    body = client.post("/analyze", json={"texts": [ES], "lang": "es"}).json()
    assert set(body) == {"task", "lang", "results"} and set(body["results"][0]) == {"label", "probas"}


# /analyze/file


def test_file_rows_each_go_to_their_own_model_and_unknown_rows_get_an_error_line(per_lang):

    client, models = per_lang()
    rows = [("a", EN), ("b", SHORT), ("c", PT), ("d", FR), ("e", ES)]
    body = "id,text\n" + "".join(f'{row_id},"{text}"\n' for row_id, text in rows)
    response = client.post(
        "/analyze/file", files={"file": ("t.csv", body.encode())}, data={"lang": "auto", "id_column": "id"}
    )
    assert response.status_code == 200, response.text
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["id"] for line in lines] == ["a", "b", "c", "d", "e"]
    assert [line.get("lang") for line in lines] == ["en", None, "pt", None, "es"]
    assert lines[1]["error"]["code"] == "too_short"
    assert lines[3]["error"] == {
        "code": "unknown_language",
        "message": lines[3]["error"]["message"],
        "detected": "fr",
    }
    assert lines[2]["probas"] == pytest.approx(expected(PT))
    assert seen(models["pt"]) == [PT]

    response = client.post(
        "/analyze/file", files={"file": ("t.csv", body.encode())}, data={"lang": "auto", "fallback": "true"}
    )
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["lang_source"] for line in lines] == [
        "detected",
        "fallback",
        "detected",
        "fallback",
        "detected",
    ]
    assert all("error" not in line for line in lines)


# Several models under a small budget


@pytest.fixture
def budgeted(fake_app, monkeypatch) -> Callable[[float], tuple[TestClient, list[str]]]:
    """The app (micro-batching on) whose registry counts 100 MB per loaded language model against
    `budget_mb`."""

    def make(budget_mb: float) -> tuple[TestClient, list[str]]:
        models = {lang: FakeModel(delay_s=0.01) for lang in ("es", "en", "it", "pt")}
        loads = install_weighted_models(monkeypatch, models, budget_mb, admission_wait_s=30)
        return fake_app(FakeModel(), MICRO_BATCHING="true"), loads

    return make


def test_a_batch_needing_more_models_than_the_budget_holds_is_503_never_half_an_answer(budgeted):
    client, loads = budgeted(budget_mb=200)  # the detector and one language model
    assert client.post("/analyze", json={"texts": [ES, ES], "lang": "auto"}).status_code == 200
    response = client.post("/analyze", json={"texts": [ES, EN], "lang": "auto"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "over_memory_budget"
    assert int(response.headers["Retry-After"]) > 0
    assert loads == ["es"]  # es was not unloaded for a set that could not fit
    assert client.post("/analyze", json={"texts": [EN], "lang": "auto"}).status_code == 200
    assert loads == ["es", "en"]


def test_a_mixed_batch_inside_the_budget_and_concurrent_mixed_requests_all_answer(budgeted):
    client, _ = budgeted(budget_mb=300)  # two language models at a time
    batches = [[ES, EN], [EN, IT], [IT, ES], [PT, ES], [EN, PT]] * 2
    answers: list[int] = []
    start = threading.Barrier(len(batches))

    def request(texts: list[str]) -> None:
        start.wait()
        answers.append(client.post("/analyze", json={"texts": texts, "lang": "auto"}).status_code)

    threads = [threading.Thread(target=request, args=(texts,)) for texts in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == [200] * len(batches)


# The real model


@needs_minilm
@pytest.mark.slow
def test_real_models_answer_a_mixed_batch_as_their_fixed_lang_requests_do(onnx_minilm):
    model = str(onnx_minilm)
    env = {f"MODEL_SENTIMENT_{lang}": model for lang in ("ES", "EN", "IT", "PT")}
    with configured(BACKEND="onnx", MEMORY_BUDGET_MB="8192", PREPACKED="false", **env):
        from main import app

        with TestClient(app) as client:
            texts = [EN, ES, PT, IT]
            auto = client.post("/analyze", json={"texts": texts, "lang": "auto"}).json()["results"]
            for text, result in zip(texts, auto, strict=True):
                alone = client.post("/analyze", json={"text": text, "lang": result["lang"]}).json()
                assert result["probas"] == pytest.approx(alone["probas"], abs=1e-5)
            assert [r["lang"] for r in auto] == ["en", "es", "pt", "it"]
            loaded = {m["key"] for m in client.get("/memory").json()["loaded"]}
            assert {
                "sentiment:es",
                "sentiment:en",
                "sentiment:it",
                "sentiment:pt",
                "language:detector",
            } <= loaded


@needs_minilm
@pytest.mark.slow
def test_four_language_models_serve_mixed_batches_in_a_512_mb_cgroup(onnx_minilm_int8, tmp_path):
    """The real server in a real 512 MB cgroup, one exported model per language (each its own
    files, so its own prepacked variant and mapping): concurrent mixed batches are all answered
    whole, nothing is OOM-killed, and the cgroup's peak stays under the limit."""
    from tests.ops.test_soak import memory_cgroup
    from tests.support import real_server

    env = {}
    for lang in ("es", "en", "it", "pt"):
        shutil.copytree(onnx_minilm_int8, tmp_path / lang, ignore=shutil.ignore_patterns("prepacked"))
        env[f"MODEL_SENTIMENT_{lang.upper()}"] = str(tmp_path / lang)
    batches = [[ES, EN, IT, PT], [PT, IT], [EN, ES2, SHORT], [IT, EN2, PT, ES]] * 5
    with (
        memory_cgroup(512) as cgroup,
        real_server(tmp_path, cgroup=cgroup.path, BACKEND="onnx", **env) as server,
    ):
        answers: list[tuple[int, dict]] = []

        def send(texts: list[str]) -> None:
            body = json.dumps({"texts": texts, "lang": "auto"}).encode()
            response = server.request(
                "POST", "/analyze", body, {"Content-Type": "application/json"}, timeout=180
            )
            answers.append((response.status, response.json()))

        threads = [threading.Thread(target=send, args=(texts,)) for texts in batches]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(240)
        assert [status for status, _ in answers] == [200] * len(batches), answers
        for _, body in answers:
            assert all(("label" in r) != ("error" in r) for r in body["results"])
        assert cgroup.oom_kills() == 0
        peak = cgroup.peak_mb()
        assert peak is None or peak <= 512
        memory = json.loads(server.request("GET", "/memory").body)
        loaded = {model["key"] for model in memory["loaded"]}
        assert {"sentiment:es", "sentiment:en", "sentiment:it", "sentiment:pt", "language:detector"} <= loaded
        print(f"cgroup peak {peak} MB; /memory: {json.dumps(memory)[:1500]}")
