"""Per-route request counts and latency, as pure ASGI so streamed responses pass through unbuffered.

Requests are labelled by the route template that matched (`/analyze`, not the raw path), so a
client probing random URLs cannot grow the number of series; unmatched paths share one label,
and so do methods HTTP does not define (`metrics.method_label`).
"""

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.monitoring import history
from service.monitoring.metrics import UNMATCHED_ROUTE, observe_request


def route_template(scope: Scope) -> str:
    """The path template of the route the router matched (it records it in the scope)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before starting a response

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            route, seconds = route_template(scope), time.perf_counter() - started
            observe_request(scope["method"], route, status, seconds)
            history.observe_request(route, status, seconds)
