"""No secret in any log line: the API key, and whatever a URL's query carries as a key or token.

Clients put keys where they should not (`?api_key=...` in a URL, a key pasted into a path), and
uvicorn's access log writes the whole target of every request, refused ones too. So every log
record is redacted when it is made, whichever logger and handler it goes to: a log record factory
(not a filter, which sits on one logger or handler and is dropped when uvicorn configures logging)
replaces, in its message and its string arguments,
- the configured API_KEY, as sent or percent-encoded, wherever it appears;
- the value of any query parameter whose name says it is a credential (`api_key`, `token`, ...),
  whatever the value: a wrong key may be someone's right one elsewhere.
The arguments keep their types and places: uvicorn's access formatter unpacks them.
"""

import logging
import re
from typing import Any
from urllib.parse import quote, quote_plus

from service.ops.config import get_ops_settings

REDACTED = "[REDACTED]"
CREDENTIAL_PARAM = re.compile(
    r"([?&;](?:api[_-]?key|apikey|key|token|access[_-]?token|auth|authorization|secret|password)=)[^&;#\s\"']*",
    re.IGNORECASE,
)

_installed = False


def _key_forms() -> tuple[str, ...]:
    try:
        key = get_ops_settings().api_key
    except Exception:  # settings that do not load are reported elsewhere; never fail a log line
        return ()
    if key is None:
        return ()
    secret = key.get_secret_value()
    forms = {secret, quote(secret), quote(secret, safe=""), quote_plus(secret)}  # uvicorn logs quote(path)
    return tuple(sorted(forms - {""}, key=len, reverse=True))


def redact(text: str, keys: tuple[str, ...] | None = None) -> str:
    """`text` with the API key and credential query values replaced by REDACTED."""
    for key in _key_forms() if keys is None else keys:
        text = text.replace(key, REDACTED)
    return CREDENTIAL_PARAM.sub(rf"\1{REDACTED}", text)


def _redacted(value: Any, keys: tuple[str, ...]) -> Any:
    return redact(value, keys) if isinstance(value, str) else value


def install() -> None:
    """Wrap the current log record factory (once per process) so that every record is redacted."""
    global _installed
    if _installed:
        return
    _installed = True
    make_record = logging.getLogRecordFactory()

    def redacting_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        keys = _key_forms()
        if isinstance(record.msg, str):
            record.msg = redact(record.msg, keys)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg, keys) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {name: _redacted(arg, keys) for name, arg in record.args.items()}
        return record

    logging.setLogRecordFactory(redacting_record)
