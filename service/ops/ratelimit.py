"""Optional per-client rate limit: a token bucket per client address, 429 + Retry-After when empty.

A client may burst RATE_LIMIT_PER_MIN requests and then one per 60/RATE_LIMIT_PER_MIN seconds.
The client is the address in the ASGI scope: behind a proxy (Render) uvicorn puts the
`X-Forwarded-For` client there only for proxies listed in FORWARDED_ALLOW_IPS, so set that to the
proxy's address (or `*` where only the proxy can reach the service); otherwise every client shares
the proxy's bucket. `/health` is not counted: a platform's health check must never be refused.
"""

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from service.ops.asgi import passthrough, send_error
from service.ops.config import get_ops_settings

EXEMPT_PATHS = frozenset({"/health"})
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


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.buckets: TokenBuckets | None = None

    def _buckets_for(self, per_minute: int) -> TokenBuckets:
        if self.buckets is None or self.buckets.per_minute != per_minute:
            self.buckets = TokenBuckets(per_minute)
        return self.buckets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        per_minute = get_ops_settings().rate_limit_per_min
        if per_minute is None or passthrough(scope) or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        wait = self._buckets_for(per_minute).take(client_address(scope))
        if not wait:
            await self.app(scope, receive, send)
            return
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
