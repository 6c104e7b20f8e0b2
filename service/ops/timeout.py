"""Request timeout: REQUEST_TIMEOUT_S from the request's arrival until its response starts.

When it passes, the client is answered at once: 408 while the app is still waiting for the
request body (a client uploading too slowly, slow-loris style), 504 when the work itself is
too slow. The work is then cancelled, but a sync route runs in a threadpool thread that nothing
can stop: its thread finishes in the background, and what it answers is dropped. Its memory and
its thread (40 in anyio's pool) stay taken until then, which the memory watchdog still sees.
A response that has started (a streamed NDJSON body) is not cut: it is making progress.
"""

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.ops.asgi import passthrough, send_error
from service.ops.config import get_ops_settings

# Work abandoned after its client was answered, kept referenced until it ends.
_abandoned: set[asyncio.Task[None]] = set()


def _forget(task: asyncio.Task[None]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


class TimeoutMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        timeout = get_ops_settings().request_timeout_s
        if passthrough(scope) or not timeout:
            await self.app(scope, receive, send)
            return
        started = answered = body_done = reading = False

        async def tracking_receive() -> Message:
            nonlocal body_done, reading
            reading = not body_done
            try:
                message = await receive()
            finally:
                reading = False
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return
            started = True
            await send(message)

        work = asyncio.ensure_future(self.app(scope, tracking_receive, guarded_send))
        try:
            done, _ = await asyncio.wait({work}, timeout=timeout)
        except asyncio.CancelledError:  # the server is cancelling this request: cancel its work too
            work.cancel()
            raise
        if work in done or started:
            await work
            return
        answered = True
        work.cancel()
        _abandoned.add(work)
        work.add_done_callback(_forget)
        if reading:
            await send_error(
                scope,
                send,
                408,
                "request_timeout",
                f"the request body did not arrive within REQUEST_TIMEOUT_S={timeout:g} s",
                {"Connection": "close"},
            )
        else:
            await send_error(
                scope,
                send,
                504,
                "timeout",
                f"the work did not finish within REQUEST_TIMEOUT_S={timeout:g} s; it was abandoned",
                {"Retry-After": "30"},
            )
