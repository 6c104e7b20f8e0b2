"""Bad input gets a clear 4xx/503 JSON error, never a traceback, and the next request still works."""

import pytest

from tests.support import MINILM, app_client, needs_minilm

GOOD = {"text": "Me encanta este lugar"}


@pytest.fixture(scope="module")
def client():
    with app_client(
        BACKEND="torch",
        MODEL_SENTIMENT_ES=str(MINILM),
        MODEL_SENTIMENT_EN=str(MINILM),
        MODEL_IRONY_ES="/nonexistent/irony-model",
        MAX_BATCH="4",
        MAX_TEXT_CHARS="50",
        MEMORY_BUDGET_MB="4096",  # torch itself does not fit 512 MB: that is what BACKEND=onnx is for
    ) as client:
        yield client


def assert_error(response, status: int, code: str, *phrases: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert "Traceback" not in response.text
    for phrase in phrases:
        assert phrase in error["message"], error["message"]
    return error


BAD_BODIES = [
    ({"text": ""}, "empty"),
    ({"text": "   \n\t "}, "whitespace"),
    ({"texts": ["ok", "  "]}, "texts[1] is empty"),
    ({"text": "x" * 51}, "MAX_TEXT_CHARS=50"),
    ({"texts": ["a", "b", "c", "d", "e"]}, "MAX_BATCH=4"),
    ({"texts": []}, "at least one"),
    ({}, "exactly one"),
    ({"text": "a", "texts": ["b"]}, "exactly one"),
    ({"text": 42}, "text"),
    ({"texts": "not a list"}, "texts"),
    ({"texts": [1, 2]}, "texts"),
    ({"text": ["a"]}, "text"),
    (
        {"text": "hola", "task": "sarcasm"},
        "'irony', 'ner', 'pos', 'targeted_sentiment' or 'context_hate_speech'",
    ),
    ({"text": "hola", "lang": "fr"}, "'es', 'en', 'it' or 'pt'"),
    ({"text": "hola", "task": "targeted_sentiment"}, "targeted_sentiment needs `context`: one string"),
    ({"texts": ["a", "b"], "task": "context_hate_speech", "context": ["x"]}, "1 contexts for 2 texts"),
    ({"texts": ["a"], "task": "targeted_sentiment", "context": "x"}, "a list of 1 strings"),
    ({"text": "hola", "task": "sentiment", "context": "x"}, "`context` is only for targeted_sentiment"),
    ({"text": "hola", "task": "targeted_sentiment", "context": "  "}, "context[0] is empty"),
    ({"text": "hola", "colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("body", "phrase"), BAD_BODIES)
def test_invalid_bodies_are_422_and_name_the_problem(client, body, phrase):
    assert_error(client.post("/analyze", json=body), 422, "invalid_input", phrase)
    assert client.post("/analyze", json=GOOD).status_code == 200


@pytest.mark.parametrize(
    "raw", [b"{not json", b"", b"[1, 2", b'{"text": "unterminated', b"{'text': 'single quotes'}"]
)
def test_invalid_json_is_400(client, raw):
    response = client.post("/analyze", content=raw, headers={"content-type": "application/json"})
    if raw == b"":
        assert_error(response, 422, "invalid_input")
    else:
        assert_error(response, 400, "invalid_json", "not valid JSON")
    assert client.post("/analyze", json=GOOD).status_code == 200


def test_wrong_content_type_and_method(client):
    assert (
        client.post("/analyze", content=b"text=hola", headers={"content-type": "text/plain"}).status_code
        == 422
    )
    assert_error(client.get("/analyze"), 405, "http_error")
    assert_error(client.get("/nowhere"), 404, "http_error")


@needs_minilm
@pytest.mark.parametrize("text", ["☹☹☹☹", "…~~~", "™ ☺"])
def test_text_that_preprocessing_empties_is_422(client, text):
    error = assert_error(client.post("/analyze", json={"text": text}), 422, "invalid_input", "preprocessing")
    assert error["empty_after_preprocessing"] == [0]
    batch = client.post("/analyze", json={"texts": ["hola", text]})
    assert assert_error(batch, 422, "invalid_input")["empty_after_preprocessing"] == [1]
    assert client.post("/analyze", json=GOOD).status_code == 200


@needs_minilm
def test_unloadable_model_is_503_naming_the_env_var(client):
    for _ in range(2):  # the second answer comes from the remembered failure, just as clearly
        error = assert_error(
            client.post("/analyze", json={"text": "qué ironía", "task": "irony"}),
            503,
            "model_unavailable",
            "MODEL_IRONY_ES",
        )
        assert error["env_var"] == "MODEL_IRONY_ES"
    assert client.post("/analyze", json=GOOD).status_code == 200


@pytest.mark.slow
def test_unreachable_hub_is_503_naming_the_env_var(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # fail at once, as an unreachable hub does after retries
    with app_client(BACKEND="torch", MEMORY_BUDGET_MB="4096") as client:
        response = client.post("/analyze", json={"text": "hola"})
        assert_error(response, 503, "model_unavailable", "MODEL_SENTIMENT_ES", "hub")
        assert response.headers["retry-after"]


def test_missing_onnx_export_is_503_saying_how_to_export(tmp_path):
    with app_client(BACKEND="onnx", ONNX_DIR=str(tmp_path)) as client:
        error = assert_error(
            client.post("/analyze", json={"text": "hola", "lang": "en"}),
            503,
            "model_unavailable",
            "python -m service.export --task sentiment --lang en",
            "MODEL_SENTIMENT_EN",
        )
        assert error["env_var"] == "MODEL_SENTIMENT_EN"
