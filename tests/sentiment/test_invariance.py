"""Same text, same answer: a text's probabilities do not depend on the call it is computed in.

The shipped INT8 export of tweet-sentiment-minilm (the `onnx_minilm_int8` fixture) and every text of
both shared labelled sets: alone, in every batch size up to BATCH_MAX_SIZE, among random mates at
a random place (so padded to longer mates or not), and through the server under concurrency.
Identical within 1e-6. On a CPU whose kernels would differ (AVX512's MatMulNBits, issue 12)
these fail unless every call is padded to an even token count; the last test checks that padding
itself, which holds on any CPU.
"""

import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.hardware import CPU_BATCH
from service.sentiment.backends.onnx_backend import OnnxModel
from service.sentiment.preprocessing import preprocess_tweet
from tests.support import needs_data, read_labelled

pytestmark = [pytest.mark.slow, needs_data]

TOLERANCE = 1e-6
SETS = {"xlmt_spanish": "es", "xlmt_english": "en"}


@pytest.fixture(scope="module")
def model(onnx_minilm_int8: Path) -> OnnxModel:
    return OnnxModel(onnx_minilm_int8, 1)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Both shared sets, preprocessed as served, without the texts preprocessing empties."""
    processed = (
        preprocess_tweet(text, lang) for name, lang in SETS.items() for text in read_labelled(name)[0]
    )
    return list(dict.fromkeys(text for text in processed if text))


@pytest.fixture(scope="module")
def alone(model: OnnxModel, texts: list[str]) -> dict[str, np.ndarray]:
    """Each text's answer computed on its own: what a lone request gets."""
    return {text: np.array(model.predict_probas([text])[0]) for text in texts}


def differences(model: OnnxModel, batch: Sequence[str], alone: dict[str, np.ndarray]) -> np.ndarray:
    got = np.array(model.predict_probas(batch))
    return np.abs(got - np.array([alone[text] for text in batch])).max(axis=1)


def test_every_text_of_both_sets_answers_the_same_among_random_mates(model, texts, alone):
    order = random.Random(12).sample(texts, len(texts))
    sizes = range(2, CPU_BATCH + 1)
    start, worst = 0, 0.0
    for index in range(len(order)):
        size = sizes[index % len(sizes)]
        if start >= len(order):
            break
        worst = max(worst, float(differences(model, order[start : start + size], alone).max()))
        start += size
    assert worst <= TOLERANCE


def test_a_text_answers_the_same_in_every_batch_size_first_last_and_among_copies(model, texts, alone):
    rng = random.Random(3)
    for text in rng.sample(texts, 8):
        for size in range(2, CPU_BATCH + 1):
            mates = rng.sample(texts, size - 1)
            for batch in ([text, *mates], [*mates, text], [text] * size):
                assert differences(model, batch, alone).max() <= TOLERANCE, (text, size, batch.index(text))


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_property_a_text_alone_equals_the_text_in_any_batch(model, texts, alone, data):
    text = data.draw(st.sampled_from(texts), label="text")
    mates = data.draw(st.lists(st.sampled_from(texts), max_size=CPU_BATCH - 1), label="mates")
    place = data.draw(st.integers(0, len(mates)), label="place")
    batch = [*mates[:place], text, *mates[place:]]
    assert differences(model, batch, alone).max() <= TOLERANCE


def test_concurrent_and_sequential_answers_are_identical_through_the_server(
    make_client, onnx_minilm_int8, texts
):
    client = make_client(
        BACKEND="onnx",
        MODEL_SENTIMENT_ES=str(onnx_minilm_int8),
        MEMORY_BUDGET_MB="4096",
        BATCH_MAX_WAIT_MS="20",
    )
    sample = random.Random(5).sample(texts, 64)

    def ask(text: str) -> dict[str, float]:
        response = client.post("/analyze", json={"text": text})
        assert response.status_code == 200, response.text
        return response.json()["probas"]

    sequential = [ask(text) for text in sample]
    with ThreadPoolExecutor(16) as threads:
        concurrent = list(threads.map(ask, sample))
    assert concurrent == sequential  # exactly: the same floats, whatever each request's batch
    stats = client.get("/system").json()["batching"]["sentiment:es"]
    assert stats["batches"] < stats["requests"] and stats["largest_batch"] > 1  # batches did form


def test_every_call_is_padded_to_an_even_token_count(model, texts, monkeypatch):
    """Why the answers above hold on AVX512 too: each MatMulNBits call gets an even row count."""
    shapes: list[tuple[int, ...]] = []
    run = model.session.run

    def spy(outputs, feed, options):  # type: ignore[no-untyped-def]
        shapes.append(feed["input_ids"].shape)
        return run(outputs, feed, options)

    monkeypatch.setattr(model.session, "run", spy, raising=False)
    rng = random.Random(7)
    for size in range(1, CPU_BATCH + 1):
        model.predict_probas(rng.sample(texts, size))
    assert [shape[0] for shape in shapes] == list(range(1, CPU_BATCH + 1))
    assert all(shape[1] % 2 == 0 for shape in shapes), shapes
