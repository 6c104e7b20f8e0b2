"""JSON text that is valid UTF-8 whatever strings it echoes.

A Python string can hold a lone surrogate (JSON's `"\\udfff"` escape parses into one), which UTF-8
cannot encode: written as is, it failed the whole response (a 500, or an NDJSON stream cut at that
row). A value holding one is written with every non-ASCII character escaped, the surrogate as the
client sent it, so the line stays one valid JSON value and reads back to the same strings.
"""

import json
from typing import Any


def encodable(text: str) -> bool:
    """Whether `text` is valid Unicode (no lone surrogate), so that UTF-8 can encode it."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def dumps(value: Any, **options: Any) -> str:
    """`json.dumps(value, ensure_ascii=False, **options)`, escaped to ASCII when it holds a lone
    surrogate: the result always encodes as UTF-8."""
    text = json.dumps(value, ensure_ascii=False, **options)
    return text if encodable(text) else json.dumps(value, ensure_ascii=True, **options)
