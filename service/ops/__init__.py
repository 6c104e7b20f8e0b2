"""Operations and hardening: API key, rate limit, body and time limits, the memory watchdog.

Everything here is pure ASGI middleware or a background thread; `main.py` calls `install_ops`
(`install.py`) and starts and stops the watchdog in its lifespan. Graceful shutdown is `serve.py`
(the server command) and `supervise.sh` (the restart loop start.sh runs it in).

Importing the package imports nothing else: `python -m service.ops.serve` imports it before its
own first line runs, which pauses the garbage collector for the rest of the start.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "install_ops": "service.ops.install",
    "start_watchdog": "service.ops.watchdog",
    "stop_watchdog": "service.ops.watchdog",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


__all__ = ["install_ops", "start_watchdog", "stop_watchdog"]
