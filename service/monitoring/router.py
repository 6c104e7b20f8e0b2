"""`GET /metrics` (Prometheus), `GET /dashboard` (the memory page) and its feeds.

The page itself is a shell with no data in it: with API_KEY set it is the one route besides
`/health` served without the key (`service/ops/security.py`), so that a browser can open it and
ask for the key. Its feeds, `/dashboard/data` and `/dashboard/history`, want the key like every route.
"""

import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.error_handlers import error_examples
from service.monitoring.exceptions import HistoryUnavailable
from service.monitoring.history import current_history
from service.monitoring.metrics import exposition, route_stats
from service.monitoring.schemas import DashboardData, History
from service.system.router import memory

router = APIRouter(tags=["monitoring"])

DASHBOARD_HTML = Path(__file__).with_name("dashboard.html")
# The page loads nothing from anywhere: inline script and style, data from this origin only.
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# The key typed into the page must not leak through a Referer, and data must not sit in caches.
PAGE_HEADERS = {
    "Content-Security-Policy": DASHBOARD_CSP,
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
NO_STORE = {"Cache-Control": "no-store"}


@lru_cache
def _dashboard_page() -> str:
    return DASHBOARD_HTML.read_text(encoding="utf-8")


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}},
    summary="Prometheus metrics: memory, budget, requests, latency, model churn, batching",
)
def metrics() -> Response:
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/dashboard", response_class=HTMLResponse, summary="Live memory dashboard (one page)")
def dashboard() -> HTMLResponse:
    return HTMLResponse(_dashboard_page(), headers=PAGE_HEADERS)


@router.get(
    "/dashboard/data",
    response_model=DashboardData,
    summary="What the dashboard polls: the memory report plus request totals per route",
)
def dashboard_data(response: Response) -> DashboardData:
    response.headers.update(NO_STORE)
    return DashboardData(time=time.time(), memory=memory(), routes=route_stats())


@router.get(
    "/dashboard/history",
    response_model=History,
    responses=error_examples(503),
    summary="The recent past the dashboard draws first: samples every HISTORY_STEP_S, and events",
)
def dashboard_history(
    response: Response,
    after: Annotated[
        float | None,
        Query(
            ge=0,
            allow_inf_nan=False,
            description="Only samples taken after this Unix time (to poll for new ones).",
        ),
    ] = None,
) -> History:
    history = current_history()
    if history is None:
        raise HistoryUnavailable("the history is not running: it starts with the app's lifespan")
    response.headers.update(NO_STORE)
    layout = history.layout
    return History(
        step_s=layout.step_s,
        window_s=layout.samples * layout.step_s,
        capacity=layout.samples,
        event_capacity=layout.events,
        bytes=history.bytes,
        persisted=history.persisted,
        pid=os.getpid(),
        **history.read(after),
    )
