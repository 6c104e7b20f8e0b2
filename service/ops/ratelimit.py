"""Optional per-client rate limit: a token bucket per client, 429 + Retry-After when empty.

A client may burst RATE_LIMIT_PER_MIN requests and then one per 60/RATE_LIMIT_PER_MIN seconds.
The client is the API key once `security.py` has checked it (so requests without the key cannot
spend its quota), else the address in the ASGI scope: failed key checks spend their address's
bucket, which slows key guessing. A key sent while API_KEY is unset is not checked, so it is not
the client either: rotating made-up keys must not give fresh buckets.
Behind a proxy (Render) uvicorn puts the `X-Forwarded-For` client in the scope only for proxies
listed in FORWARDED_ALLOW_IPS (`service/ops/serve.py` trusts nobody while it is unset); otherwise
every client shares the proxy's bucket. `/health` is not counted: a platform's health check must
never be refused.
"""

import math
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from service.ops.asgi import passthrough, send_error
from service.ops.config import OpsSettings, get_ops_settings

EXEMPT_PATHS = frozenset({"/health"})
# Where security.py leaves a digest of the API key it accepted, in the request's scope["state"].
AUTHENTICATED_KEY = "authenticated_key"
# Buckets kept; past this the least recently seen client's is dropped (it gets a full one back),
# so rotating source addresses cannot grow memory without bound.
MAX_CLIENTS = 10_000


class TokenBuckets:
    def __init__(
        self, per_minute: int, max_clients: int = MAX_CLIENTS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_minute = per_minute
        self.capacity = float(per_minute)
        self.refill_per_s = per_minute / 60.0
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """Take a token for `client`: 0 when granted, else the seconds until one is available."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.refill_per_s)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.refill_per_s
            self._buckets[client] = (tokens - 1 if not wait else tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait

    def __len__(self) -> int:
        return len(self._buckets)


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def client_identity(scope: Scope) -> str:
    """The bucket a request spends: its checked API key, else its address."""
    key = (scope.get("state") or {}).get(AUTHENTICATED_KEY)
    return f"key:{key}" if key else f"address:{client_address(scope)}"


class _NoApp:
    """Stands for the app when a bare ASGI stack has no `scope["app"]`."""


_NO_APP = _NoApp()
_buckets: weakref.WeakKeyDictionary[object, tuple[OpsSettings, TokenBuckets]] = weakref.WeakKeyDictionary()


def _buckets_for(scope: Scope, settings: OpsSettings, per_minute: int) -> TokenBuckets:
    """The app's buckets, shared by this middleware and the key check; new settings start afresh."""
    app = scope.get("app", _NO_APP)
    made_for, buckets = _buckets.get(app, (None, None))
    if buckets is None or made_for is not settings:
        buckets = TokenBuckets(per_minute)
        _buckets[app] = (settings, buckets)
    return buckets


async def refused(scope: Scope, send: Send) -> bool:
    """Take a token for this request's client; when there is none, answer 429 and say so."""
    settings = get_ops_settings()
    per_minute = settings.rate_limit_per_min
    if per_minute is None or scope["path"] in EXEMPT_PATHS:
        return False
    wait = _buckets_for(scope, settings, per_minute).take(client_identity(scope))
    if not wait:
        return False
    retry_after = max(1, math.ceil(wait))
    await send_error(
        scope,
        send,
        429,
        "rate_limited",
        f"more than RATE_LIMIT_PER_MIN={per_minute} requests a minute from this client; "
        f"retry in {retry_after} s",
        {"Retry-After": str(retry_after)},
        retry_after_s=retry_after,
    )
    return True


class RateLimitMiddleware:
    """Runs inside the API key check (`service/ops/__init__.py`), so it sees who was authenticated."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if passthrough(scope) or not await refused(scope, send):
            await self.app(scope, receive, send)
