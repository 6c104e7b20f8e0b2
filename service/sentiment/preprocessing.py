"""Tweet preprocessing, identical to `pysentimiento.preprocessing.preprocess_tweet(text, lang=lang)`.

Ported from pysentimiento 0.7.3 (Juan Manuel Pérez et al.), `pysentimiento/preprocessing.py`, whose
wheel's LICENSE.md reads "an open-source library for non-commercial use and scientific research purposes
only" (no MIT text ships with it). Ported because importing any pysentimiento module runs its package
`__init__`, which pulls torch, transformers' Trainer and datasets: hundreds of MB the lean ONNX runtime
must not load. Only what `create_analyzer` uses is kept: each language's default tokens (Italian's are
`##user`, `##url`, `##hashtag`; Portuguese's laughter is `kk`) and `preprocess_handles`, which the
token-classification analyzers (ner, pos) turn off; the regexes and the character table are the
original's, and `tests/sentiment/test_preprocessing.py` checks the port against the original.
"""

import re
from collections.abc import Callable

import emoji

_USER = re.compile(r"@[a-zA-Z0-9_]{0,15}")
_URL = re.compile(
    r"((?<=[^a-zA-Z0-9])(?:https?\:\/\/|[a-zA-Z0-9]{1,}\.{1}|\b)(?:\w{1,}\.{1}){1,5}"
    r"(?:com|co|org|edu|gov|uk|net|ca|de|jp|fr|au|us|ru|ch|it|nl|se|no|es|mil|iq|io|ac|ly|sm){1}"
    r"(?:\/[a-zA-Z0-9]{1,})*)"
)
_HASHTAG = re.compile(r"\B#(\w*[a-zA-Z]+\w*)")
_CAMEL_START = re.compile(r"([A-Z]+)")
_EMOJI_NAME = re.compile(r"\|([^\|]+)\|")
# The original builds this per call from shorten=3: three or more of the same character become three.
_REPEATED = re.compile(r"(.)\1\1+")

# Characters dropped (None) or replaced before the other steps, as in the original table.
_CHAR_TABLE = str.maketrans(
    {
        "~": None,
        "£": None,
        "¥": None,
        "¨": '"',
        "©": None,
        "«": '"',
        "°": None,
        "´": None,
        "¶": None,
        "·": None,
        "º": None,
        "»": '"',
        "×": None,
        "ا": None,
        "–": None,
        "—": None,
        "‘": None,
        "’": None,
        "“": '"',
        "”": '"',
        "•": None,
        "…": None,
        "‼": "!",
        "€": "$",
        "™": None,
        "●": None,
        "☠": None,
        "☹": None,
        "☺": None,
        "☻": "😃",
        "♀": None,
        "♂": None,
        "♡": "❤️",
        "♥": "❤️",
        "⚰": None,
        "⛱": None,
        "⛹": None,
        "✈": None,
        "✓": None,
        "❤": None,
        "ー": None,
        "🕯": None,
        "🛰": None,
    }
)

# lang -> (user token, url token, hashtag token, laughter regex, laughter replacement).
_LANGS: dict[str, tuple[str, str, str, re.Pattern[str], str]] = {
    "es": ("@usuario", "url", "hashtag", re.compile("[ja][ja]+aj[ja]+"), "jaja"),
    "en": ("@USER", "HTTPURL", "hashtag", re.compile("[ha][ha]+ah[ha]+"), "haha"),
    "it": ("##user", "##url", "##hashtag", re.compile("[ha][ha]+ah[ha]+"), "haha"),
    "pt": ("@USER", "HTTPURL", "hashtag", re.compile("[ha][ha]+ah[ha]+|kk+"), "kk"),
}


# The non-ASCII characters of the emoji emoji knows. Each emoji holds at least one (keycaps end in
# U+20E3; tests/sentiment/test_preprocessing.py checks every one), so a text with none of them holds
# no emoji and `demojize` would return it unchanged: it is skipped, and it was most of the
# preprocessing of a tweet without emoji (~35 of ~50 us).
_EMOJI_CHARS = frozenset(char for key in emoji.EMOJI_DATA for char in key if not char.isascii())


def _hashtag(token: str) -> Callable[[re.Match[str]], str]:
    """'#NoMásViolencia' -> 'hashtag no más violencia': split camel case so the words are tokens."""
    return lambda match: f"{token} " + _CAMEL_START.sub(r" \1", match.group(1)).strip().lower()


def _emoji_words(match: re.Match[str]) -> str:
    """'|cara_sonriente|' -> ' emoji cara sonriente emoji '."""
    return " emoji " + " ".join(match.group(1).split("_")) + " emoji "


def preprocess_tweet(text: str, lang: str, preprocess_handles: bool = True) -> str:
    """Normalise a tweet the way pysentimiento's models were trained to see it."""
    try:
        user_token, url_token, hashtag_token, laughter, laugh = _LANGS[lang]
    except KeyError:
        raise ValueError(f"unsupported language {lang!r}: expected one of {sorted(_LANGS)}") from None
    text = _HASHTAG.sub(_hashtag(hashtag_token), text)
    text = text.translate(_CHAR_TABLE)
    if preprocess_handles:
        text = _USER.sub(user_token, text)
    text = _URL.sub(url_token, text)
    text = _REPEATED.sub(r"\1\1\1", text)
    if not _EMOJI_CHARS.isdisjoint(text):
        text = emoji.demojize(text, language=lang, delimiters=("|", "|"))
    text = _EMOJI_NAME.sub(_emoji_words, text)
    text = laughter.sub(laugh, text)
    return text.strip()
