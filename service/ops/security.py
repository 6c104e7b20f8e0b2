"""Optional API key: off while API_KEY is unset; `/health` and the dashboard's page never ask for it.

`/health` is exempt so that a platform's health check works without the key, and `/dashboard`
because it is a page with no data in it that a browser opens from the address bar (which cannot
send a header): the page asks for the key and sends it with its own requests. `/ready` loads a
model, and `/docs`, `/openapi.json`, `/memory`, `/metrics` and the dashboard's feeds describe the
service: with a key set they want it too (a browser on `/docs` then needs the key sent by a proxy
or an extension, or API_KEY left unset).
"""

import hashlib
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from service.ops.asgi import header, passthrough, send_error
from service.ops.config import get_ops_settings
from service.ops.ratelimit import AUTHENTICATED_KEY, refused

# Exact paths: `/dashboard/data` and `/dashboard/history` are not exempt.
EXEMPT_PATHS = frozenset({"/health", "/dashboard"})


def _digest(value: str) -> bytes:
    """Fixed-length digests make the comparison constant-time in the key's length too."""
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def presented_keys(scope: Scope) -> list[str]:
    """The keys a request presents: `Authorization: Bearer <key>` and `X-API-Key: <key>`."""
    keys = []
    authorization = header(scope, b"authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            keys.append(credentials.strip())
    api_key = header(scope, b"x-api-key")
    if api_key is not None and api_key.strip():
        keys.append(api_key.strip())
    return keys


def key_matches(presented: list[str], expected: str) -> bool:
    """Every presented key is compared, each with `hmac.compare_digest`, so no early exit."""
    wanted = _digest(expected)
    matches = [hmac.compare_digest(_digest(key), wanted) for key in presented]
    return any(matches)


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = get_ops_settings().api_key
        if key is None or passthrough(scope) or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        presented = presented_keys(scope)
        expected = key.get_secret_value()
        if key_matches(presented, expected):
            # The rate limit inside keys on this: a digest, so the key itself is not kept around.
            scope.setdefault("state", {})[AUTHENTICATED_KEY] = _digest(expected).hex()[:16]
            await self.app(scope, receive, send)
            return
        if await refused(scope, send):  # failed checks spend their address's bucket: slows guessing
            return
        problem = "the API key is wrong" if presented else "an API key is required"
        await send_error(
            scope,
            send,
            401,
            "unauthorized",
            f"{problem}: send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            {"WWW-Authenticate": 'Bearer realm="api"'},
        )
