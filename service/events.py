"""What happened to memory, said once for whoever records it: loads, evictions, refusals, watchdog actions.

The registry and the watchdog call `emit`; the dashboard's history (`service/monitoring/history.py`)
subscribes. Kept apart from both so that neither the registry nor the watchdog imports monitoring.
A listener runs on the caller's thread, sometimes under the registry's lock: it must be quick and
must not call back into the registry.
"""

import logging
import typing
from collections.abc import Callable
from typing import Literal

logger = logging.getLogger(__name__)

Kind = Literal["load", "eviction", "refusal", "load_failure", "watchdog", "recycle", "start", "stop"]
KINDS: tuple[Kind, ...] = typing.get_args(Kind)
Listener = Callable[[Kind, str, float, float | None], None]

_listeners: list[Listener] = []


def emit(kind: Kind, detail: str = "", value: float = 0.0, at: float | None = None) -> None:
    """Tell every listener (`at`: when it began, Unix seconds, if not now); a listener that fails is
    logged, never raised into the caller's work."""
    for listener in tuple(_listeners):
        try:
            listener(kind, detail, value, at)
        except Exception:
            logger.exception("event listener failed on %s %s", kind, detail)


def subscribe(listener: Listener) -> Callable[[], None]:
    """Add `listener`; returns the function that removes it."""
    _listeners.append(listener)

    def unsubscribe() -> None:
        if listener in _listeners:
            _listeners.remove(listener)

    return unsubscribe
