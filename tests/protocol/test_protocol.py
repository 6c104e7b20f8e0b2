"""The protocol's routes in process (the real clients run against a real server in test_clients.py):
TEI's /predict and /info, a model's endpoint root, refusals, and errors in the shape the clients read."""

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from fastapi.testclient import TestClient

from service.ops.config import get_ops_settings
from tests.support import app_client, needs_minilm

pytestmark = [pytest.mark.slow, needs_minilm]  # the session's minilm export

TEXTS = ["¡Qué buen día hace hoy! 😍", "Esto es horrible, no lo soporto"]


@pytest.fixture
def client(onnx_minilm) -> Iterator[Callable[..., TestClient]]:
    """The app serving the minilm as sentiment/es; the ops settings (API_KEY) read afresh, and
    forgotten once its environment is gone."""
    with ExitStack() as apps:

        def make(**env: str) -> TestClient:
            get_ops_settings.cache_clear()
            settings = {
                "BACKEND": "onnx",
                "MODEL_SENTIMENT_ES": str(onnx_minilm),
                "NUM_THREADS": "1",
                "MEMORY_BUDGET_MB": "8192",  # the budget counts the test process, not only the app
            }
            return apps.enter_context(app_client(**settings, **env))

        yield make
    get_ops_settings.cache_clear()


def analyzed(client: TestClient, texts: list[str]) -> list[dict[str, float]]:
    response = client.post("/analyze", json={"texts": texts, "task": "sentiment", "lang": "es"})
    assert response.status_code == 200, response.text
    return [result["probas"] for result in response.json()["results"]]


def assert_ranked(answer: list[dict], probas: dict[str, float]) -> None:
    """Every label, highest first, each with /analyze's probability."""
    assert [item["label"] for item in answer] == sorted(probas, key=probas.__getitem__, reverse=True)
    for item in answer:
        assert abs(item["score"] - probas[item["label"]]) <= 1e-6


def test_predict_answers_teis_shapes_with_analyzes_scores(client) -> None:
    app = client()
    expected = analyzed(app, TEXTS)
    single = app.post("/predict", json={"inputs": TEXTS[0]})
    assert single.status_code == 200, single.text
    assert_ranked(single.json(), expected[0])  # one input: one flat list
    batch = app.post("/models/sentiment-es/predict", json={"inputs": TEXTS, "truncate": True})
    assert batch.status_code == 200, batch.text
    for answer, probas in zip(batch.json(), expected, strict=True):
        assert_ranked(answer, probas)


def test_endpoint_root_answers_the_inference_apis_text_classification(client) -> None:
    app = client()
    expected = analyzed(app, TEXTS)
    default = app.post("/", json={"inputs": TEXTS[0]})
    assert default.status_code == 200, default.text
    assert len(default.json()) == 1  # one input: a list holding its list, as the hosted API answers
    assert_ranked(default.json()[0], expected[0])
    batch = app.post("/models/sentiment-es", json={"inputs": TEXTS, "parameters": {"top_k": 1}})
    assert batch.status_code == 200, batch.text
    for answer, probas in zip(batch.json(), expected, strict=True):
        assert len(answer) == 1
        assert_ranked(answer, {answer[0]["label"]: probas[answer[0]["label"]]})
        assert answer[0]["score"] == max(probas.values())
    softmax = {"inputs": TEXTS[1], "parameters": {"function_to_apply": "softmax"}}
    own = app.post("/models/sentiment-es", json=softmax)
    assert own.status_code == 200, own.text
    assert_ranked(own.json()[0], expected[1])


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/predict", {"inputs": "hola", "raw_scores": True}, "raw_scores=true is not served"),
        ("/predict", {"inputs": "hola", "truncate": False}, "truncate=false is not served"),
        ("/predict", {"inputs": "hola", "truncation_direction": "left"}, "truncation_direction=left"),
        ("/predict", {"inputs": [["hola", "a", "b"]]}, "each pair in `inputs` is [text, text_pair]"),
        ("/predict", {"inputs": [["hola", "Milei"]]}, "sentiment/es reads one text: text pairs are only"),
        ("/", {"inputs": {"text": "hola", "text_pair": "Milei"}}, "sentiment/es reads one text"),
        ("/", {"inputs": "x" * 2001}, "text has 2001 characters; at most MAX_TEXT_CHARS=2000"),
        ("/", {"inputs": ["hola", " "]}, "texts[1] is empty or only whitespace"),
        ("/", {"inputs": ["hola"] * 33}, "33 inputs sent; at most MAX_BATCH=32"),
        ("/", {"inputs": "hola", "parameters": {"function_to_apply": "sigmoid"}}, "answers softmax"),
        ("/", {"inputs": "hola", "parameters": {"function_to_apply": "none"}}, "function_to_apply=none"),
        (
            "/",
            {"inputs": "hola", "parameters": {"stride": 8}},
            "stride: not a parameter of text-classification",
        ),
        ("/models/sentiment-xx", {"inputs": "hola"}, "unsupported task/lang sentiment/xx"),
        ("/models/sentiment", {"inputs": "hola"}, "unsupported task/lang"),
        ("/models/targeted_sentiment-es", {"inputs": "hola"}, 'send {"text": ..., "text_pair": ...}'),
    ],
)
def test_refusals_come_in_teis_error_shape(client, path: str, body: dict, message: str) -> None:
    response = client().post(path, json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert isinstance(error["error"], str) and message in error["error"]  # what both clients read
    assert error["error_type"] == "invalid_input" or error["error_type"] == "unsupported"


def test_analyze_keeps_its_own_error_shape(client) -> None:
    error = client().post("/analyze", json={"text": "x" * 2001}).json()["error"]
    assert error["code"] == "invalid_input" and "MAX_TEXT_CHARS" in error["message"]


def test_info_describes_the_model_and_the_limits(client) -> None:
    info = client(MAX_BATCH="16", MAX_TEXT_CHARS="500").get("/models/sentiment-es/info")
    assert info.status_code == 200, info.text
    body = info.json()
    assert body["model_type"]["classifier"]["id2label"] == {"0": "NEG", "1": "NEU", "2": "POS"}
    assert body["model_type"]["classifier"]["label2id"] == {"NEG": 0, "NEU": 1, "POS": 2}
    assert (body["task"], body["lang"], body["model_dtype"]) == ("sentiment", "es", "float32")
    limits = body["max_client_batch_size"], body["max_input_chars"], body["max_input_length"]
    assert limits == (16, 500, 128)
    assert body["auto_truncate"] is True
    assert client().get("/info").json()["model_id"] == body["model_id"]  # the default model


def test_the_ops_answers_on_protocol_paths_come_in_teis_shape(client) -> None:
    app = client(API_KEY="sesame")
    refused = app.post("/predict", json={"inputs": "hola"})
    assert refused.status_code == 401
    assert refused.json()["error"].startswith("an API key is required")
    assert refused.json()["error_type"] == "unauthorized"
    assert app.post("/analyze", json={"text": "hola"}).json()["error"]["code"] == "unauthorized"
    bearer = app.post("/predict", json={"inputs": "hola"}, headers={"Authorization": "Bearer sesame"})
    assert bearer.status_code == 200, bearer.text
    header = app.post("/", json={"inputs": "hola"}, headers={"X-API-Key": "sesame"})
    assert header.status_code == 200, header.text
    wrong = app.get("/info", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"].startswith("the API key is wrong")


def test_openapi_documents_the_protocol(client) -> None:
    schema = client().get("/openapi.json").json()
    for path, method in [("/predict", "post"), ("/", "post"), ("/models/{model}", "post"), ("/info", "get")]:
        operation = schema["paths"][path][method]
        assert operation["summary"]
        assert operation["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/HfErrorResponse"
        )
        assert operation["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/HfErrorResponse"
        )
    assert schema["paths"]["/analyze"]["post"]["responses"]["401"]["content"]["application/json"]["schema"][
        "$ref"
    ].endswith("/ErrorResponse")
    examples = schema["components"]["schemas"]["PredictRequest"]["examples"]
    assert {"inputs": "¡Qué buen día hace hoy! 😍"} in examples


def test_token_classification_honours_ignore_labels_and_refuses_what_it_cannot(client, standins) -> None:
    app = client(MODEL_NER_ES=str(standins.exported("ner", "es")))
    text = "Lionel Messi juega en Miami con @usuario"
    full = app.post("/models/ner-es", json={"inputs": text})
    assert full.status_code == 200, full.text
    entities = full.json()
    assert entities[-1] == {"entity_group": "USER", "score": 1.0, "word": "@usuario", "start": 32, "end": 40}
    kept = app.post("/models/ner-es", json={"inputs": text, "parameters": {"ignore_labels": ["USER"]}})
    assert kept.json() == [entity for entity in entities if entity["entity_group"] != "USER"]
    for parameters, message in [
        ({"aggregation_strategy": "simple"}, "aggregation_strategy=simple is not served"),
        ({"stride": 16}, "stride is not served"),
        ({"top_k": 1}, "top_k: not a parameter of token-classification, which ner/es answers"),
    ]:
        refused = app.post("/models/ner-es", json={"inputs": text, "parameters": parameters})
        assert refused.status_code == 422 and message in refused.json()["error"], refused.text
    predicted = app.post("/models/ner-es/predict", json={"inputs": text})
    assert "ner/es is a token-classification model" in predicted.json()["error"]


def test_a_models_auto_endpoint_reads_each_text_with_its_languages_model(client, onnx_minilm) -> None:
    """`/models/{task}-auto`, as `lang: "auto"`: each text to its own language's model (the minilm
    serves es and en here), answered as /analyze answers it; a text whose language cannot be told
    refuses the request in TEI's shape (the protocol has no per-text error)."""
    app = client(MODEL_SENTIMENT_EN=str(onnx_minilm))
    texts = ["¡Qué buen día hace hoy, me encanta todo esto!", "I really love this new phone so much"]
    expected = app.post("/analyze", json={"texts": texts, "lang": "auto"})
    assert expected.status_code == 200, expected.text
    results = expected.json()["results"]
    assert [result["lang"] for result in results] == ["es", "en"]
    answer = app.post("/models/sentiment-auto", json={"inputs": texts})
    assert answer.status_code == 200, answer.text
    for ranked, result in zip(answer.json(), results, strict=True):
        assert_ranked(ranked, result["probas"])
    short = app.post("/models/sentiment-auto", json={"inputs": [texts[0], "ok"]})
    assert short.status_code == 422 and short.json()["error_type"] == "too_short"
    assert short.json()["error"].startswith("inputs[1]: ")
    info = app.get("/models/sentiment-auto/info")
    assert info.status_code == 422 and "/models/sentiment-{lang}/info" in info.json()["error"]
