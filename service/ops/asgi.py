"""What the ops middlewares share: answering in the route's JSON error shape, reading headers.

The middlewares are pure ASGI, not `BaseHTTPMiddleware`, which would buffer streamed responses
(the bulk route streams NDJSON) and run each request in an extra task.
"""

from typing import Any

from starlette.types import Scope, Send

from service.error_handlers import error_response


async def _no_body() -> dict[str, Any]:
    return {"type": "http.disconnect"}


async def send_error(
    scope: Scope,
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    **details: Any,
) -> None:
    """Answer in the error shape of the route the path belongs to, as its own errors are."""
    response = error_response(status, code, message, headers, path=scope.get("path", ""), **details)
    await response(scope, _no_body, send)


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (`name` in lower case), decoded as latin-1 like Starlette."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def passthrough(scope: Scope) -> bool:
    """Lifespan and websocket traffic is not a request these limits apply to."""
    return scope["type"] != "http"
