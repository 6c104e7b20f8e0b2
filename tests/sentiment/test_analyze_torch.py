"""POST /analyze with the torch backend on the real trained tweet classifier."""

import math

import pytest

from service.evaluate import macro_f1
from tests.support import MINILM, app_client, needs_data, needs_minilm, read_labelled

pytestmark = [pytest.mark.slow, needs_minilm]

POSITIVE = {"es": "Me encanta este lugar, es maravilloso 😍", "en": "I love this so much, best day ever!"}
NEGATIVE = {"es": "Odio esto, es horrible y asqueroso 😡", "en": "This is terrible, I hate it"}
NEUTRAL = {"es": "Mañana hay reunión a las 10", "en": "The meeting is at 10am on Tuesday"}


@pytest.fixture(scope="module")
def client():
    with app_client(
        BACKEND="torch",
        MODEL_SENTIMENT_ES=str(MINILM),
        MODEL_SENTIMENT_EN=str(MINILM),
        MEMORY_BUDGET_MB="4096",
    ) as client:
        yield client


@pytest.mark.parametrize("lang", ["es", "en"])
def test_obvious_texts_get_the_right_label(client, lang):
    for text, expected in ((POSITIVE[lang], "POS"), (NEGATIVE[lang], "NEG"), (NEUTRAL[lang], "NEU")):
        response = client.post("/analyze", json={"text": text, "lang": lang})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["label"], body["task"], body["lang"]) == (expected, "sentiment", lang)
        assert set(body["probas"]) == {"NEG", "NEU", "POS"}
        assert math.isclose(sum(body["probas"].values()), 1.0, abs_tol=1e-5)


def test_batch_equals_singles(client):
    texts = [POSITIVE["es"], NEGATIVE["es"], NEUTRAL["es"], "jajaja @amigo mira esto http://t.co/x #BuenDía"]
    batch = client.post("/analyze", json={"texts": texts}).json()["results"]
    singles = [client.post("/analyze", json={"text": text}).json() for text in texts]
    assert [r["label"] for r in batch] == [s["label"] for s in singles]
    for from_batch, single in zip(batch, singles):
        for label, p in single["probas"].items():
            assert from_batch["probas"][label] == pytest.approx(p, abs=1e-5)


def test_probabilities_are_exactly_pysentimiento_s(client):
    from pysentimiento import create_analyzer

    reference = create_analyzer("sentiment", "es", model_name=str(MINILM))
    for text in (
        POSITIVE["es"],
        NEGATIVE["es"],
        "@usuario jajajaja qué buenoooo 😂😂 #NoPuedoMás http://x.com",
    ):
        expected = reference.predict(text)
        body = client.post("/analyze", json={"text": text}).json()
        assert body["label"] == expected.output
        assert body["probas"] == pytest.approx(expected.probas, abs=1e-6)


@needs_data
def test_macro_f1_on_english_tweets(client):
    texts, gold = read_labelled("xlmt_english")
    predicted = []
    for start in range(0, len(texts), 32):
        response = client.post("/analyze", json={"texts": texts[start : start + 32], "lang": "en"})
        assert response.status_code == 200, response.text
        predicted += [r["label"] for r in response.json()["results"]]
    assert macro_f1(gold, predicted) >= 0.60


def test_model_loaded_once_with_gradients_off(client):
    from service.registry import get_registry

    client.post("/analyze", json={"text": POSITIVE["es"]})
    with get_registry().use(get_registry_item()) as analyzer:
        model = analyzer.model.model
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
    assert get_registry().counters["loads"] >= 1
    loads = get_registry().counters["loads"]
    client.post("/analyze", json={"text": NEGATIVE["es"]})
    assert get_registry().counters["loads"] == loads


def get_registry_item():
    from service.sentiment.service import model_item

    return model_item("sentiment", "es")
