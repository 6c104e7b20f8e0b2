"""The real Hugging Face clients, unchanged, against a real server: `huggingface_hub.InferenceClient`
and `@huggingface/inference` (node, `npm ci` of tests/protocol/js's lockfile) answer what /analyze
answers for the same texts, with and without an API key, and raise their own errors carrying the
service's message when it refuses."""

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from bench.server import Server
from service.sentiment.tokens import word_tokenizer
from tests.support import needs_minilm, real_server

pytestmark = [pytest.mark.slow, needs_minilm]

JS = Path(__file__).parent / "js"
KEY = "protocol-test-key"
TEXTS = [
    "¡Qué buen día hace hoy! 😍",
    "Esto es horrible, no lo soporto",
    "Lionel Messi juega en Miami con @usuario",
]
PAIR = {"text": "El gobierno de Milei anunció recortes en educación", "text_pair": "Milei"}
TARGETED = {"texts": [PAIR["text"]], "context": [PAIR["text_pair"]], "task": "targeted_sentiment"}
TOO_LONG = "x" * 2001
TOO_LONG_MESSAGE = "text has 2001 characters; at most MAX_TEXT_CHARS=2000"
PAIR_MESSAGE = (
    "sentiment/es reads one text: text pairs are only for targeted_sentiment and context_hate_speech"
)


@pytest.fixture(scope="module")
def models(onnx_minilm, standins) -> dict[str, str]:
    return {
        "MODEL_SENTIMENT_ES": str(onnx_minilm),
        "MODEL_NER_ES": str(standins.exported("ner", "es")),
        "MODEL_POS_ES": str(standins.exported("pos", "es")),
        "MODEL_TARGETED_SENTIMENT_ES": str(standins.exported("targeted_sentiment", "es")),
    }


@pytest.fixture(scope="module", params=[None, KEY], ids=["no-key", "api-key"])
def server(request, models, tmp_path_factory) -> Iterator[tuple[Server, str | None]]:
    """A real server, open or wanting API_KEY; the key (or None) its clients send."""
    key = request.param
    options = {"API_KEY": key} if key else {}
    workdir = tmp_path_factory.mktemp("protocol")
    with real_server(workdir, BACKEND="onnx", ONNX_DIR=str(workdir), **models, **options) as running:
        yield running, key


@pytest.fixture(scope="module")
def node() -> Path:
    """tests/protocol/js installed from its lockfile (`npm ci`): the pinned @huggingface/inference."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed (.ci/run installs them from Debian)")
    result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return JS / "clients.mjs"


@pytest.fixture(autouse=True)
def no_hub_token(monkeypatch, tmp_path) -> None:
    """huggingface_hub falls back to a saved hub token; the 'no key' calls must send none."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def analyze(server: Server, key: str | None, body: dict[str, Any]) -> list[dict[str, Any]]:
    headers = {"X-API-Key": key} if key else {}
    response = httpx.post(f"{server.url}/analyze", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def ranked(probas: dict[str, float]) -> list[str]:
    return sorted(probas, key=probas.__getitem__, reverse=True)


def assert_classified(answer: list[dict[str, Any]], probas: dict[str, float]) -> None:
    """Every label, highest first, each with /analyze's probability within 1e-6."""
    assert [item["label"] for item in answer] == ranked(probas)
    for item in answer:
        assert abs(item["score"] - probas[item["label"]]) <= 1e-6


def expected_entities(result: dict[str, Any]) -> list[dict[str, Any]]:
    """What token-classification must answer, from /analyze's ner or pos result: ner's entities, or
    pos's labelled words, each scored by the mean of its words' scores."""
    words = word_tokenizer("es")(result["text"])  # spaCy's own offsets
    assert [word.text for word in words] == result["tokens"]
    spans = [(word.idx, word.idx + len(word.text)) for word in words]
    words = list(zip(result["tokens"], result["labels"], result["scores"], spans, strict=True))
    if result.get("entities") is None:
        return [
            {"entity_group": label, "score": score, "word": token, "start": start, "end": end}
            for token, label, score, (start, end) in words
            if label is not None
        ]
    entities = []
    for entity in result["entities"]:
        scores = [
            s for _, _, s, (start, _) in words if s is not None and entity["start"] <= start < entity["end"]
        ]
        entities.append(
            {
                "entity_group": entity["type"],
                "score": sum(scores) / len(scores),
                "word": entity["text"],
                "start": entity["start"],
                "end": entity["end"],
            }
        )
    return entities


def assert_entities(answer: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """The same entities (group, word, offsets), each scored within 1e-6."""
    fields = ("entity_group", "word", "start", "end")
    assert [[e[k] for k in fields] for e in answer] == [[e[k] for k in fields] for e in expected]
    for got, want in zip(answer, expected, strict=True):
        assert abs(got["score"] - want["score"]) <= 1e-6


def as_dicts(elements: list[Any]) -> list[dict[str, Any]]:
    """huggingface_hub's output dataclasses as plain dicts (they are dict subclasses)."""
    return [dict(element) for element in elements]


def test_python_client_answers_what_analyze_answers(server) -> None:
    running, key = server
    client = InferenceClient(model=f"{running.url}/models/sentiment-es", token=key)
    expected = analyze(running, key, {"texts": TEXTS, "task": "sentiment", "lang": "es"})
    for text, result in zip(TEXTS, expected, strict=True):
        assert_classified(as_dicts(client.text_classification(text)), result["probas"])
    default = InferenceClient(model=f"{running.url}/", token=key)  # the default model's root
    assert_classified(as_dicts(default.text_classification(TEXTS[0])), expected[0]["probas"])
    best = client.text_classification(TEXTS[1], top_k=1)
    assert [element.label for element in best] == ranked(expected[1]["probas"])[:1]

    (targeted,) = analyze(running, key, TARGETED)
    answer = client.text_classification(PAIR, model=f"{running.url}/models/targeted_sentiment-es")  # type: ignore[arg-type]
    assert_classified(as_dicts(answer), targeted["probas"])

    for task in ("ner", "pos"):
        results = analyze(running, key, {"texts": TEXTS, "task": task, "lang": "es"})
        assert any(expected_entities(result) for result in results)
        for text, result in zip(TEXTS, results, strict=True):
            answer = client.token_classification(text, model=f"{running.url}/models/{task}-es")
            assert_entities(as_dicts(answer), expected_entities(result))


def test_python_client_raises_its_error_with_the_services_message(server) -> None:
    running, key = server
    client = InferenceClient(model=f"{running.url}/models/sentiment-es", token=key)
    with pytest.raises(HfHubHTTPError) as too_long:
        client.text_classification(TOO_LONG)
    assert too_long.value.response.status_code == 422
    assert TOO_LONG_MESSAGE in str(too_long.value)
    with pytest.raises(HfHubHTTPError) as pair:
        client.text_classification(PAIR)  # type: ignore[arg-type]
    assert PAIR_MESSAGE in str(pair.value)
    if key:
        for token, message in [(None, "an API key is required"), ("wrong", "the API key is wrong")]:
            with pytest.raises(HfHubHTTPError) as refused:
                InferenceClient(model=f"{running.url}/", token=token).text_classification(TEXTS[0])
            assert refused.value.response.status_code == 401
            assert message in str(refused.value)


def run_js(script: Path, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    env = {**os.environ, "NODE_NO_WARNINGS": "1"}
    result = subprocess.run(
        ["node", str(script)], input=json.dumps(calls), capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    assert len(answers) == len(calls)
    return answers


def test_js_client_answers_what_analyze_answers_and_raises_the_services_message(server, node) -> None:
    running, key = server
    url = running.url
    sentiment = analyze(running, key, {"texts": TEXTS, "task": "sentiment", "lang": "es"})
    tokens = {
        task: analyze(running, key, {"texts": TEXTS, "task": task, "lang": "es"}) for task in ("ner", "pos")
    }
    (targeted,) = analyze(running, key, TARGETED)

    def call(
        method: str, path: str, inputs: Any, token: str | None = key, **parameters: Any
    ) -> dict[str, Any]:
        return {
            "method": method,
            "endpointUrl": f"{url}{path}",
            "accessToken": token,
            "inputs": inputs,
            "parameters": parameters or None,
        }

    calls = [call("textClassification", "/models/sentiment-es", text) for text in TEXTS]
    calls.append(call("textClassification", "/", TEXTS[0]))
    calls.append(call("textClassification", "/models/sentiment-es", TEXTS[1], top_k=1))
    calls.append(call("textClassification", "/models/targeted_sentiment-es", PAIR))
    calls += [call("tokenClassification", f"/models/{task}-es", text) for task in tokens for text in TEXTS]
    refusals = [
        (call("textClassification", "/models/sentiment-es", TOO_LONG), 422, TOO_LONG_MESSAGE),
        (call("textClassification", "/models/sentiment-es", PAIR), 422, PAIR_MESSAGE),
    ]
    if key:
        refusals.append(
            (call("textClassification", "/", TEXTS[0], token=None), 401, "an API key is required")
        )
        refusals.append(
            (call("textClassification", "/", TEXTS[0], token="wrong"), 401, "the API key is wrong")
        )
    answers = run_js(node, calls + [refusal for refusal, _, _ in refusals])

    for answer, result in zip(answers, sentiment, strict=False):
        assert_classified(answer["ok"], result["probas"])
    assert_classified(answers[3]["ok"], sentiment[0]["probas"])
    assert [item["label"] for item in answers[4]["ok"]] == ranked(sentiment[1]["probas"])[:1]
    assert_classified(answers[5]["ok"], targeted["probas"])
    token_answers = iter(answers[6 : 6 + 2 * len(TEXTS)])
    for results in tokens.values():
        for result in results:
            assert_entities(next(token_answers)["ok"], expected_entities(result))
    for answer, (_, status, message) in zip(answers[len(calls) :], refusals, strict=True):
        error = answer["error"]
        assert error["name"] == "ProviderApiError"  # InferenceClientProviderApiError
        assert error["status"] == status
        assert error["message"].startswith("Failed to perform inference: ")
        assert message in error["message"]
