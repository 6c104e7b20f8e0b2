"""The server command: uvicorn's own CLI, exiting 0 after a graceful SIGTERM shutdown.

    python -m service.ops.serve main:app --host 0.0.0.0 --port 8000 --timeout-graceful-shutdown 20

On SIGTERM (a deploy) uvicorn stops accepting, lets in-flight requests finish for up to
--timeout-graceful-shutdown seconds, runs the lifespan's shutdown, and then raises the signal
again so that its default action kills the process: exit status 143 (-15), which supervisors
and platforms read as a crash. Here that second SIGTERM lands in a handler that exits 0.
The process then ends with `os._exit`, after atexit's handlers, never through the interpreter's
finalization (`leave`): a sync route still running in a threadpool thread after the graceful
timeout would keep the interpreter alive until it returned (its threads are not daemons), and a
daemon thread inside onnxruntime (a model loading, a prepacked variant being swapped in) would be
ended by finalization with pthread_exit, which aborts the process in onnxruntime's C++ frames
(exit 134) before Python 3.14.

It also sets the defaults that hold against hostile clients (`harden`): h11 is the guarded
protocol of ops/connections.py (header deadline, connection cap), the descriptor limit is raised,
asyncio accepts few connections a tick while the kernel's accept queue holds a burst, what a
client can make it log once per connection (a failed accept, a malformed request) is logged once
a minute, and X-Forwarded-For is believed only from
FORWARDED_ALLOW_IPS (uvicorn's own default trusts 127.0.0.1, so anyone on the host, or a local
proxy that passes the header on, could pick the address the rate limit sees).
"""

import atexit
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import NoReturn

from service import runtime

GUARDED_H11 = "service.ops.connections:GuardedH11Protocol"

logger = logging.getLogger(__name__)
# Idle pool threads stop as soon as the event loop ends; give them this long before forcing.
THREAD_GRACE_S = 1.0


def _exit_zero(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _exit_code(stop: SystemExit) -> int:
    if stop.code is None or isinstance(stop.code, int):
        return stop.code or 0
    print(stop.code, file=sys.stderr)
    return 1


def _busy_threads() -> list[threading.Thread]:
    deadline = time.monotonic() + THREAD_GRACE_S
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(timeout=max(deadline - time.monotonic(), 0))
    return [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]


def leave(code: int) -> NoReturn:
    """End the process with `code` as finalization would, minus what finalization does to threads:
    busy worker threads get THREAD_GRACE_S, then atexit's handlers run (logging's flush among
    them) and the process ends where every thread stands."""
    busy = _busy_threads()
    if busy:
        logger.warning("exiting with %d worker thread(s) still running abandoned work", len(busy))
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def harden(argv: list[str]) -> list[str]:
    """Install the hardening defaults; `argv` with the proxy trust and backlog added unless given."""
    from importlib import import_module

    from uvicorn.config import HTTP_PROTOCOLS

    from service.ops.connections import BACKLOG, QueuedServer, RepeatedErrorFilter, raise_descriptor_limit

    HTTP_PROTOCOLS["h11"] = HTTP_PROTOCOLS["auto"] = GUARDED_H11
    # What `uvicorn.main.run` starts (the module: the package's `uvicorn.main` is the CLI command).
    import_module("uvicorn.main").Server = QueuedServer
    raise_descriptor_limit()
    flood = RepeatedErrorFilter()
    logging.getLogger("asyncio").addFilter(flood)
    logging.getLogger("uvicorn.error").addFilter(flood)
    defaults = {
        # Unset: nobody is trusted (an empty list); render.yaml sets "*" (see README).
        "--forwarded-allow-ips": os.environ.get("FORWARDED_ALLOW_IPS", ""),
        "--backlog": str(BACKLOG),
    }
    for option, value in defaults.items():
        if not any(arg == option or arg.startswith(f"{option}=") for arg in argv):
            argv = [*argv, option, value]
    return argv


def main() -> None:
    # Until the default model's first answer (service/startup.py); what this imports is imported
    # here, after the pause, not at the top of the module.
    runtime.pause_gc()
    from service import dataclass_code

    dataclass_code.install()  # before anything defines a dataclass
    import uvicorn.main

    signal.signal(signal.SIGTERM, _exit_zero)  # uvicorn installs its own while serving
    sys.argv = harden(sys.argv)
    try:
        uvicorn.main.main(prog_name="python -m service.ops.serve")
        code = 0
    except SystemExit as stop:
        code = _exit_code(stop)
    leave(code)


if __name__ == "__main__":
    main()
