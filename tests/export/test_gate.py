"""The export's accuracy gate (issue 26): every quantized export is checked against its own fp32 on
the shipped gate texts, by what its kind answers, and falls back to the next recipe when it misses.

Stand-ins of each kind (tiny, random weights, pysentimiento's labels) keep the default recipe; one
whose weights INT8 cannot copy (bench.standins' int8_hostile) falls back, says so in its manifest
and in /memory, and is served as exported.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.standins import build_standin
from service.config import LANGS
from service.evaluate import compare_texts, compare_tokens
from service.export import gate
from service.export.quantize import DEFAULT_RECIPE, VNNI_RECIPE, fallback_chain
from service.sentiment.preprocessing import preprocess_tweet
from service.sentiment.schemas import Entity, Prediction, TokenPrediction
from tests.support import ROOT, app_client

KINDS = [
    ("sentiment", "es", "single_label"),
    ("hate_speech", "it", "multi_label"),
    ("targeted_sentiment", "es", "single_label"),
    ("ner", "es", "ner"),
    ("pos", "en", "pos"),
]


def manifest(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "manifest.json").read_text())


@pytest.mark.parametrize("lang", LANGS)
def test_every_language_has_a_few_hundred_tweet_like_gate_texts(lang: str) -> None:
    texts = gate.read_texts(lang)
    assert len(texts) >= 250 and len(set(texts)) == len(texts)
    assert all(preprocess_tweet(text, lang) for text in texts)  # none the analyzers would refuse
    for mark in ("@", "#", "http"):
        assert sum(mark in text for text in texts) >= 20, mark
    assert sum(any(ord(c) > 0x1F000 for c in text) for text in texts) >= 20  # emoji


def test_pair_tasks_read_each_text_with_the_next_as_context() -> None:
    pairs = gate.inputs("targeted_sentiment", "es")
    texts = gate.read_texts("es")
    assert [str(p) for p in pairs] == texts and pairs[0].context == texts[1] and pairs[-1].context == texts[0]


def prediction(label: str | list[str], **probas: float) -> Prediction:
    return Prediction(label=label, probas=probas)


def test_text_figures_count_labels_decisions_and_probability_differences() -> None:
    theirs = [prediction("POS", POS=0.6, NEG=0.4)] * 20
    mine = [prediction("POS", POS=0.61, NEG=0.39)] * 19 + [prediction("NEG", POS=0.45, NEG=0.55)]
    figures = compare_texts(mine, theirs)
    assert figures["label_agreement"] == 0.95 and "decision_agreement" not in figures
    assert figures["max_proba_diff"] == pytest.approx(0.15) and figures["p95_proba_diff"] == pytest.approx(
        0.15
    )
    assert figures["mean_proba_diff"] == pytest.approx((19 * 0.01 + 0.15) / 20)
    verdict = [t.holds(figures) for t in gate.THRESHOLDS["single_label"]]
    assert verdict == [False, False]
    multi = compare_texts([prediction(["a"], a=0.7, b=0.6)], [prediction(["a", "b"], a=0.7, b=0.4)])
    assert (multi["label_agreement"], multi["decision_agreement"]) == (0.0, 0.5)


def test_token_figures_count_words_and_entity_sets() -> None:
    def tokens(labels: list[str], entities: list[Entity] | None) -> TokenPrediction:
        return TokenPrediction(
            text="Ana en Roma",
            tokens=["Ana", "en", "Roma"],
            labels=labels,
            scores=[0.9, 0.9, 0.9],
            entities=entities,
        )

    per, loc = (
        Entity(type="PER", text="Ana", start=0, end=3),
        Entity(type="LOC", text="Roma", start=7, end=11),
    )
    theirs = [tokens(["B-PER", "O", "B-LOC"], [per, loc])] * 2
    mine = [tokens(["B-PER", "O", "B-LOC"], [per, loc]), tokens(["B-PER", "O", "O"], [per])]
    figures = compare_tokens(mine, theirs)
    assert figures["label_agreement"] == pytest.approx(5 / 6) and figures["texts_identical"] == 0.5
    assert figures["entity_set_agreement"] == 0.5 and figures["entity_span_f1"] == pytest.approx(6 / 7)
    pos = compare_tokens([tokens(["NOUN", "ADP", "NOUN"], None)], [tokens(["NOUN", "ADP", "PROPN"], None)])
    assert "entity_span_f1" not in pos and pos["label_agreement"] == pytest.approx(2 / 3)


def test_thresholds_are_at_least_the_gate_before_them() -> None:
    """97 % label agreement (tweet-sentiment-minilm's gate) and 97 % of ner/pos words."""
    for kind, thresholds in gate.THRESHOLDS.items():
        bounds = {t.figure: t.bound for t in thresholds}
        assert bounds["label_agreement"] >= 0.97, kind


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [DEFAULT_RECIPE, VNNI_RECIPE, "int8-rows-ffn-pairs"])
@pytest.mark.parametrize(("task", "lang", "kind"), KINDS)
def test_a_model_that_passes_keeps_the_recipe_asked_for(
    standins, task: str, lang: str, kind: str, recipe: str
) -> None:
    meta = manifest(standins.exported(task, lang, recipe))
    record = meta["gate"]
    assert meta["quantization"]["recipe"] == recipe == record["recipe"]
    assert (record["kind"], record["passed"], record["texts"]) == (kind, True, len(gate.read_texts(lang)))
    assert record["why"] == "the first recipe passed" and len(record["attempts"]) == 1
    assert all(t.holds(record["figures"]) for t in gate.THRESHOLDS[kind])


def export(
    source: Path, out: Path, task: str = "sentiment", lang: str = "es", *options: str
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "service.export", "--task", task, "--lang", lang]
    command += ["--source", str(source), "--out", str(out), *options]
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )


@pytest.fixture(scope="module")
def fallback(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A stand-in whose first layer's FFN weights 8 bits cannot copy, exported offline from the
    default (int8-rows-ffn-nbits's SmoothQuant moves that outlier out of the weights, and passes)."""
    root = tmp_path_factory.mktemp("hostile")
    source = build_standin("sentiment", "es", root / "hf", tiny=True, int8_hostile=1)
    result = export(source, root / "sentiment-es", "sentiment", "es", "--recipe", DEFAULT_RECIPE)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "sentiment-es", result


@pytest.mark.slow
def test_a_model_that_fails_falls_back_and_says_why(fallback) -> None:
    out, result = fallback
    meta = manifest(out)
    record = meta["gate"]
    attempts = {a["recipe"]: a for a in record["attempts"]}
    assert list(attempts) == fallback_chain(DEFAULT_RECIPE)[:3]
    assert not attempts[DEFAULT_RECIPE]["passed"] and not attempts["weight-only-fp32-emb"]["passed"]
    assert attempts[DEFAULT_RECIPE]["figures"]["label_agreement"] < 0.97
    assert record["passed"] and record["recipe"] == meta["quantization"]["recipe"] == "weight-only-fp32-worst"
    assert record["why"].startswith(f"{DEFAULT_RECIPE}: label_agreement ")
    assert "/roberta/encoder/layer.0/intermediate/dense/MatMul" in meta["quantization"]["fp32_matmuls"]
    line = result.stdout.splitlines()[-1]
    assert (
        line.startswith("gate sentiment:es: weight-only-fp32-worst [single_label, 300 texts")
        and "fallback" in line
    )


@pytest.mark.slow
def test_the_fallback_is_served_as_exported_and_listed_with_its_gate(fallback) -> None:
    out, _ = fallback
    meta = manifest(out)
    env = {
        "BACKEND": "onnx",
        "MODEL_SENTIMENT_ES": str(out),
        "MEMORY_BUDGET_MB": "8192",
        "PREPACKED": "false",
    }
    with app_client(**env) as client:
        assert client.post("/analyze", json={"text": "qué lindo día"}).status_code == 200
        [item] = [i for i in client.get("/memory").json()["loaded"] if i["key"] == "sentiment:es"]
    assert item["recipe"] == "weight-only-fp32-worst"
    assert item["gate"] == {k: v for k, v in meta["gate"].items() if k != "attempts"}
    # what it costs is read from its files: fp32 embeddings make it ~4x the default's
    weights = meta["files"]["model.onnx"] + meta["files"]["model.onnx.data"]
    assert item["file_mb"] == pytest.approx(weights / 2**20, rel=0.1)


@pytest.mark.slow
def test_when_no_recipe_passes_fp32_is_exported_and_says_why(standins, tmp_path, monkeypatch) -> None:
    from service.export.build import export_model

    def fails(self, model_dir: Path, recipe: str) -> dict[str, Any]:
        return {"recipe": recipe, "passed": False, "figures": {}, "missed": ["label_agreement 0.5 < 0.97"]}

    monkeypatch.setattr(gate.Gate, "check", fails)
    meta = export_model("sentiment", "es", str(standins.source("sentiment", "es")), tmp_path / "out")
    assert meta["quantization"] is None
    assert sorted(meta["files"]) == ["model.onnx", "model.onnx.data", "tokenizer.json"]
    record = meta["gate"]
    assert (record["recipe"], record["passed"], record["figures"]) == ("fp32", True, None)
    assert [a["recipe"] for a in record["attempts"]] == fallback_chain(DEFAULT_RECIPE)[:-1]
    assert gate.gate_line("sentiment:es", meta).startswith(
        "gate sentiment:es: fp32 [single_label, 300 texts: "
    )


@pytest.mark.slow
def test_gate_lines_name_each_exported_target_with_runtime_packages_only(tmp_path) -> None:
    (tmp_path / "sentiment-es").mkdir()
    record = {
        "kind": "single_label",
        "texts": 300,
        "thresholds": ["label_agreement >= 0.97", "p95_proba_diff <= 0.05"],
        "recipe": "weight-only",
        "passed": True,
        "figures": {"label_agreement": 0.99, "p95_proba_diff": 0.01},
        "why": "the first recipe passed",
    }
    meta = {"quantization": {"recipe": "weight-only"}, "gate": record}
    (tmp_path / "sentiment-es" / "manifest.json").write_text(json.dumps(meta))
    code = "import sys; from service.export.__main__ import main; main(['--gate-lines']); "
    code += "sys.exit(any(m.startswith(('transformers', 'torch', 'optimum')) for m in sys.modules))"
    env = {**os.environ, "ONNX_DIR": str(tmp_path), "EXPORT_MODELS": "sentiment:es,irony:en"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "gate sentiment:es: weight-only [single_label, 300 texts: label_agreement 0.99, p95_proba_diff 0.01]"
    ]
