"""Every model pysentimiento's `create_analyzer` offers is served through /analyze, or refused naming
what is supported; pair tasks give pysentimiento's own probabilities.

Models are tiny stand-ins (tests/sentiment/standins.py): random weights, pysentimiento's labels and
problem types, exported by `python -m service.export` as the onnx backend serves them.
"""

import math

import pytest

from bench.standins import LABELS
from service.config import HUB_MODELS, LANGS, TASKS, Settings, model_env_var
from service.sentiment.analyzer import Pair, create_analyzer
from tests.support import app_client

pytestmark = pytest.mark.slow  # real servers, exports or browsers: not the quick tier


SERVED_HERE = [
    ("sentiment", "it"),
    ("hate_speech", "pt"),
    ("emotion", "pt"),
    ("hate_speech", "en"),
    ("emotion", "es"),
]
SERVED_HERE += [("ner", "es"), ("pos", "en")]
SERVED_HERE += [("targeted_sentiment", "es")]


def test_every_pair_of_pysentimiento_s_table_is_configured() -> None:
    """The table is pysentimiento's own, pair for pair, each with its MODEL_<TASK>_<LANG> setting."""
    analyzer = pytest.importorskip("pysentimiento.analyzer", reason="pysentimiento is not installed")
    theirs = {
        (task, lang): info["model_name"]
        for lang, tasks in analyzer.models.items()
        for task, info in tasks.items()
    }
    assert theirs == HUB_MODELS
    for task, lang in theirs:
        assert model_env_var(task, lang).lower() in Settings.model_fields
        assert (task, lang) in LABELS  # and every one has a stand-in


@pytest.fixture(scope="module")
def client(standins):
    env = {model_env_var(task, lang): str(standins.exported(task, lang)) for task, lang in SERVED_HERE}
    with app_client(BACKEND="onnx", MEMORY_BUDGET_MB="8192", **env) as client:
        yield client


@pytest.mark.parametrize(
    ("task", "lang"), [(t, la) for t in TASKS for la in LANGS if (t, la) not in HUB_MODELS]
)
def test_pairs_pysentimiento_lacks_are_refused_naming_the_supported(client, task: str, lang: str) -> None:
    body = {"text": "hola", "task": task, "lang": lang} | (
        {"context": "x"} if "context" in task or "targeted" in task else {}
    )
    response = client.post("/analyze", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "unsupported"
    assert f"{task}/{lang}" in error["message"]
    assert "it: sentiment, emotion, hate_speech, irony" in error["message"]
    assert error["supported"]["es"] == [t for (t, la) in HUB_MODELS if la == "es"]


@pytest.mark.parametrize(
    ("task", "lang"), [p for p in SERVED_HERE if p[0] in ("sentiment", "emotion", "hate_speech")]
)
def test_text_tasks_answer_their_labels_and_problem_type(client, task: str, lang: str) -> None:
    labels, problem_type = LABELS[(task, lang)]
    texts = ["Che bella giornata @mario ahahah #ForzaItalia", "Não acredito kkkkk 😂 http://g1.globo.com"]
    response = client.post("/analyze", json={"texts": texts, "task": task, "lang": lang})
    assert response.status_code == 200, response.text
    for result in response.json()["results"]:
        assert list(result["probas"]) == labels
        if problem_type == "multi_label_classification":
            assert result["label"] == [name for name, p in result["probas"].items() if p > 0.5]
        else:
            assert result["label"] == max(result["probas"], key=result["probas"].get)
            assert math.isclose(sum(result["probas"].values()), 1.0, abs_tol=1e-5)


def test_ner_and_pos_through_the_api(client) -> None:
    text = "Lionel Messi juega en Miami con @usuario"
    response = client.post("/analyze", json={"text": text, "task": "ner", "lang": "es"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["task"], body["lang"], body["text"]) == ("ner", "es", text)
    assert body["tokens"] == ["Lionel", "Messi", "juega", "en", "Miami", "con", "@usuario"]
    assert body["labels"][-1] == "B-USER" and body["entities"][-1]["type"] == "USER"
    batch = client.post(
        "/analyze", json={"texts": ["I love this song", "@bob hi"], "task": "pos", "lang": "en"}
    )
    assert batch.status_code == 200, batch.text
    first, second = batch.json()["results"]
    assert first["tokens"] == ["I", "love", "this", "song"] and first["entities"] is None
    assert second["labels"][0] == "USER" and all(not label.startswith("B-") for label in first["labels"])
    empty = client.post("/analyze", json={"text": "☹☹☹", "task": "ner", "lang": "es"})
    assert empty.status_code == 422 and "after pysentimiento's preprocessing" in empty.text


def test_targeted_sentiment_reads_its_target(client) -> None:
    text = "El gobierno de Milei anunció nuevos recortes"
    answers = [
        client.post("/analyze", json={"text": text, "context": target, "task": "targeted_sentiment"}).json()
        for target in ("Milei", "los recortes")
    ]
    assert [list(a["probas"]) for a in answers] == [LABELS[("targeted_sentiment", "es")][0]] * 2
    assert answers[0]["probas"] != answers[1]["probas"]  # the target is part of the input
    batch = client.post(
        "/analyze",
        json={"texts": [text, text], "context": ["Milei", "los recortes"], "task": "targeted_sentiment"},
    ).json()["results"]
    for single, from_batch in zip(answers, batch, strict=True):
        for label, p in single["probas"].items():
            assert from_batch["probas"][label] == pytest.approx(p, abs=1e-4)


@pytest.mark.parametrize("task", ["targeted_sentiment", "context_hate_speech"])
def test_pair_tasks_give_pysentimiento_s_probabilities(standins, task: str) -> None:
    pysentimiento = pytest.importorskip("pysentimiento", reason="pysentimiento is not installed")
    source = standins.source(task, "es")
    theirs = pysentimiento.create_analyzer(task=task, lang="es", model_name=str(source))
    texts = [
        "El gobierno de @Milei anunció recortes 😡 http://t.co/x",
        "Qué lindo día en #BuenosAires jajaja",
    ]
    targets = ["@Milei", "Buenos Aires 😍"]
    for backend, model in (("torch", source), ("onnx", standins.exported(task, "es"))):
        ours = create_analyzer(task, "es", model, backend)
        predictions = ours.predict([Pair(t, c) for t, c in zip(texts, targets, strict=True)])
        # Its batch path: for one text it feeds input_ids alone, which drops BERT's segment ids.
        for expected, prediction in zip(theirs.predict(texts, target=targets), predictions, strict=True):
            assert prediction.label == expected.output
            for label, p in expected.probas.items():
                assert prediction.probas[label] == pytest.approx(p, abs=1e-5), (backend, label)
