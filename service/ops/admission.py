"""Admission at the memory watchdog's hard limit: new work gets 503 + Retry-After.

The operational reads stay open so that a platform and an operator can see what is happening:
`/health` (a refused health check would get a healthy-but-full worker killed), `/memory`,
`/metrics` and the dashboard. Admitted requests are counted until their response ends; the
watchdog recycles the worker only when none is in flight.
"""

from starlette.types import ASGIApp, Receive, Scope, Send

from service.ops.asgi import passthrough, send_error
from service.ops.watchdog import RETRY_AFTER_S, current_watchdog

EXEMPT_PATHS = frozenset(
    {"/health", "/memory", "/metrics", "/dashboard", "/dashboard/data", "/dashboard/history"}
)


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watchdog = current_watchdog()
        if watchdog is None or passthrough(scope) or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if not watchdog.admit():
            limits = watchdog.limits
            await send_error(
                scope,
                send,
                503,
                "over_memory_budget",
                f"memory is over the hard limit ({watchdog.used_mb:.0f} MB of the {limits.budget_mb:.0f} MB "
                f"budget, limit {limits.hard_mb:.0f} MB); new work is refused until it frees up",
                {"Retry-After": str(RETRY_AFTER_S)},
                used_mb=round(watchdog.used_mb, 1),
                hard_limit_mb=round(limits.hard_mb, 1),
            )
            return
        try:
            await self.app(scope, receive, send)
        finally:
            watchdog.release()
