"""The lean preprocessing port gives exactly pysentimiento's output, and loads no numeric library.

`data/tricky_tweets.txt` holds one tweet a line; the two-character escapes `\\n` and `\\t` stand for a
newline and a tab, so that multi-line tweets stay on one line of the file.
"""

import json
import subprocess
import sys
from pathlib import Path

import emoji
import pytest

from service.sentiment import preprocessing
from service.sentiment.preprocessing import preprocess_tweet

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "data" / "tricky_tweets.txt"
LANGS = ("es", "en", "it", "pt")


def tweets() -> list[str]:
    lines = CORPUS.read_text(encoding="utf-8").split("\n")[:-1]
    return [""] + [line.replace("\\n", "\n").replace("\\t", "\t") for line in lines]


def test_corpus_is_big_enough() -> None:
    assert len(tweets()) >= 300


@pytest.mark.parametrize("handles", [True, False], ids=["text tasks", "ner/pos: handles kept"])
@pytest.mark.parametrize("lang", LANGS)
def test_matches_pysentimiento(lang: str, handles: bool) -> None:
    original = pytest.importorskip(
        "pysentimiento.preprocessing", reason="pysentimiento is not installed: nothing to compare with"
    )
    mismatches = []
    for text in tweets():
        expected = original.preprocess_tweet(text, lang=lang, preprocess_handles=handles)
        got = preprocess_tweet(text, lang, preprocess_handles=handles)
        if got != expected:
            mismatches.append(f"{text!r}\n  pysentimiento: {expected!r}\n  port:          {got!r}")
    shown = "\n".join(mismatches[:10])
    assert not mismatches, (
        f"{len(mismatches)} of {len(tweets())} tweets differ ({lang}); first ones:\n{shown}"
    )


def test_a_text_without_emoji_characters_is_not_demojized_and_comes_out_the_same() -> None:
    """demojize is skipped for a text holding none of `_EMOJI_CHARS`: that must mean no emoji."""
    assert all(preprocessing._EMOJI_CHARS.intersection(key) for key in emoji.EMOJI_DATA)
    for text in ("#1 y *2 de 3", "¡Qué día, señor! 12:30 #Madrid", "x\u200dy \ufe0f 1\u20e3 ©"):
        for lang in LANGS:
            skipped = preprocessing._EMOJI_CHARS.isdisjoint(text)
            demojized = emoji.demojize(text, language=lang, delimiters=("|", "|"))
            assert not skipped or demojized == text
    assert preprocess_tweet("hola 1\u20e3", "es") == "hola  emoji tecla 1 emoji"  # a keycap still is


def test_empty_results_and_unsupported_language() -> None:
    assert preprocess_tweet("☹☹☹☹", "es") == ""
    assert preprocess_tweet("… ~~~", "en") == ""
    with pytest.raises(ValueError, match="unsupported language 'fr'"):
        preprocess_tweet("bonjour", "fr")


def test_language_tokens() -> None:
    """Each language's own tokens, as pysentimiento's preprocessing tests show them."""
    text = "@mario guarda http://www.repubblica.it #BuonaSera ahahah kkkk"
    assert preprocess_tweet(text, "it") == "##user guarda ##url ##hashtag buona sera haha kkk"
    assert preprocess_tweet(text, "pt") == "@USER guarda HTTPURL hashtag buona sera kk kk"
    assert preprocess_tweet(text, "pt", preprocess_handles=False).startswith("@mario guarda")


def test_import_loads_no_numeric_library() -> None:
    heavy = ["torch", "transformers", "pysentimiento", "numpy"]
    code = (
        "import json, sys\n"
        "import service.sentiment.preprocessing\n"
        f"print(json.dumps([name for name in {heavy!r} if name in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
