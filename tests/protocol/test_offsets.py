"""Token classification's word offsets (service/protocol/service.py `_offsets`) are spaCy's own, on
every tweet of the shared sets and on runs of whitespace, which spaCy makes tokens of."""

import pytest

from service.protocol.service import _offsets
from service.sentiment.preprocessing import preprocess_tweet
from service.sentiment.tokens import word_tokenizer
from tests.support import needs_data, read_labelled

WHITESPACE = ["a  b", " x", "  x", "hoy!  emoji  \n  fin ", "\t\tx y  ", "a \n b", "a\n b", "x ", "x  "]


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize(("lang", "name"), [("es", "xlmt_spanish"), ("en", "xlmt_english")])
def test_offsets_are_spacys(lang: str, name: str) -> None:
    texts, _ = read_labelled(name)
    tokenizer = word_tokenizer(lang)
    for text in [*texts, *WHITESPACE]:
        processed = preprocess_tweet(text, lang, preprocess_handles=False)
        words = list(tokenizer(processed))
        expected = [(word.idx, word.idx + len(word.text)) for word in words]
        assert _offsets(processed, [word.text for word in words]) == expected, processed
