"""ner and pos: the service's words, labels and entities are pysentimiento's own, on the same model.

The model is a tiny RoBERTuito-shaped stand-in with random weights and pysentimiento's ner/pos label
sets: its labels are arbitrary but deterministic, so every word, every B-/I- grouping and every
offset can be compared with what `pysentimiento.create_analyzer(task="ner", ...)` answers.
"""

import sys

import pytest

from service.sentiment.analyzer import TokenAnalyzer, create_analyzer
from service.sentiment.tokens import decode, word_tokenizer
from tests.sentiment.test_preprocessing import tweets

pytestmark = pytest.mark.slow  # real servers, exports or browsers: not the quick tier


TEXTS = [
    "Lionel Messi juega en el Inter Miami con @usuario desde 2023",
    "El presidente Pedro Sánchez visitó Buenos Aires el lunes 😍 #Argentina",
    "@elonmusk bought Twitter for $44 billion http://t.co/abc jajaja",
    "I love New York!!! 🗽 @NYCMayor see you at Madison Square Garden",
    "hoy no   hay    clases,   nos vemos mañana",
]


def corpus(limit: int = 120) -> list[str]:
    """The handwritten texts and the tricky tweets that keep a word after preprocessing."""
    return TEXTS + [text for text in tweets() if text.strip()][:limit]


def pysentimiento_outputs(source, task: str, lang: str, texts: list[str]) -> list[dict | None]:
    """pysentimiento's answers; None where its pos analyzer fails on a word without a label."""
    pysentimiento = pytest.importorskip("pysentimiento", reason="pysentimiento is not installed")
    analyzer = pysentimiento.create_analyzer(task=task, lang=lang, model_name=str(source))
    outputs: list[dict | None] = []
    for text in texts:
        try:
            out = analyzer.predict(text)
        except AttributeError as error:  # `None.startswith`: a run of spaces, or a word past 128
            assert task == "pos" and "startswith" in str(error)
            outputs.append(None)
            continue
        outputs.append({"tokens": out.tokens, "labels": out.labels, "entities": out.entities})
    return outputs


def ours(analyzer: TokenAnalyzer, texts: list[str]) -> list[dict]:
    return [
        {
            "tokens": p.tokens,
            "labels": p.labels,
            "entities": None if p.entities is None else [e.model_dump() for e in p.entities],
        }
        for text in texts
        for p in analyzer.predict([text])
    ]


def comparable(texts: list[str], lang: str) -> list[str]:
    """Texts that keep a word after preprocessing (others are the API's 422)."""
    from service.sentiment.preprocessing import preprocess_tweet

    return [t for t in texts if preprocess_tweet(t, lang, preprocess_handles=False).strip()]


@pytest.mark.parametrize(("task", "lang"), [("ner", "es"), ("ner", "en"), ("pos", "es"), ("pos", "en")])
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_identical_to_pysentimiento(standins, task: str, lang: str, backend: str) -> None:
    texts = comparable(corpus(), lang)
    source = standins.source(task, lang)
    expected = pysentimiento_outputs(source, task, lang, texts)
    model_dir = source if backend == "torch" else standins.exported(task, lang)
    analyzer = create_analyzer(task, lang, model_dir, backend)
    assert isinstance(analyzer, TokenAnalyzer)
    got = ours(analyzer, texts)
    for output, mine in zip(expected, got, strict=True):
        if output is None:  # pysentimiento failed on a word without a label: null here
            assert None in mine["labels"]
    assert sum(output is None for output in expected) < len(texts) / 4
    mismatches = [(t, e, g) for t, e, g in zip(texts, expected, got, strict=True) if e is not None and e != g]
    shown = "\n".join(f"{t!r}\n  pysentimiento: {e}\n  service:       {g}" for t, e, g in mismatches[:3])
    assert not mismatches, f"{len(mismatches)} of {len(texts)} texts differ:\n{shown}"
    answered = [o for o in expected if o is not None]
    assert any(o["entities"] for o in answered) or task == "pos"
    assert any("B-USER" in o["labels"] or "USER" in o["labels"] for o in answered)


def test_batch_equals_singles_and_handles_are_users(standins) -> None:
    analyzer = create_analyzer("ner", "es", standins.exported("ner", "es"), "onnx")
    batch = analyzer.predict(TEXTS)
    singles = [analyzer.predict([text])[0] for text in TEXTS]
    assert batch == singles
    first = batch[0]
    assert first.tokens[first.tokens.index("@usuario")] == "@usuario"
    assert first.labels[first.tokens.index("@usuario")] == "B-USER"
    assert "USER" in {e.type for e in first.entities or []}
    for entity in first.entities or []:
        assert first.text[entity.start : entity.end] == entity.text


def test_words_past_the_model_length_get_no_label(standins) -> None:
    """pysentimiento leaves them None (its ner skips them, its pos would fail): null here."""
    text = " ".join(f"palabra{i}" for i in range(200))
    for task in ("ner", "pos"):
        (result,) = create_analyzer(task, "es", standins.exported(task, "es"), "onnx").predict([text])
        assert len(result.tokens) == 200
        assert result.labels[0] is not None and result.labels[-1] is None
        if task == "ner":
            assert all(e.end <= len(text) for e in result.entities or [])


class Word:
    def __init__(self, text: str, idx: int, whitespace: str = " ") -> None:
        self.text, self.idx, self.whitespace_ = text, idx, whitespace


def test_decode_groups_bio_like_pysentimiento() -> None:
    words = [Word("Ana", 0), Word("María", 4), Word("vive", 10), Word("en", 15), Word("Lima", 18, "")]
    entities = decode(words, ["B-PER", "I-PER", "O", "I-LOC", "I-LOC"])
    assert [e.model_dump() for e in entities] == [
        {"type": "PER", "text": "Ana María", "start": 0, "end": 9},
        {"type": "LOC", "text": "en Lima", "start": 15, "end": 22},
    ]
    assert [e.type for e in decode(words, ["B-PER", "B-PER", None, "I-ORG", "O"])] == ["PER", "PER", "ORG"]


def test_word_tokenizer_keeps_torch_out(monkeypatch) -> None:
    """spaCy's thinc would import torch (+260 MB) only to ask whether it may use it."""
    import subprocess
    import sys

    from tests.support import ROOT

    code = (
        "import sys\nfrom service.sentiment.tokens import word_tokenizer\n"
        "print([t.text for t in word_tokenizer('es')('hola @mundo, ¿qué tal?')], 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['hola', '@mundo', ',', '¿', 'qué', 'tal', '?'] False"
    assert word_tokenizer("en") is word_tokenizer("en")


def test_without_spacy_ner_and_pos_are_unavailable_and_other_tasks_serve(
    standins, onnx_minilm, make_client, monkeypatch
) -> None:
    """spaCy is an extra (requirements-tokens.txt): without it ner/pos answer a 503 that says what
    to install, before their model is loaded, and sentiment answers as usual."""
    monkeypatch.setitem(sys.modules, "spacy", None)  # `import spacy` fails as if it were not installed
    client = make_client(
        BACKEND="onnx",
        MODEL_NER_ES=str(standins.exported("ner", "es")),
        MODEL_SENTIMENT_ES=str(onnx_minilm),
        MEMORY_BUDGET_MB="8192",
        NUM_THREADS="1",
    )
    refused = client.post("/analyze", json={"text": "Lionel Messi juega en Miami", "task": "ner"})
    assert refused.status_code == 503 and refused.headers["retry-after"]
    error = refused.json()["error"]
    assert error["code"] == "model_unavailable" and error["missing"] == "spacy"
    assert "requirements-tokens.txt" in error["message"]
    assert [item["key"] for item in client.get("/memory").json()["loaded"]] == []
    assert client.post("/analyze", json={"text": "¡Qué buen día!"}).json()["label"] in {"POS", "NEG", "NEU"}
