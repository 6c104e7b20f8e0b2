"""`GET /metrics` (Prometheus), `GET /dashboard` (the memory page) and `GET /dashboard/data` (its feed)."""

import time
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.monitoring.metrics import exposition, route_stats
from service.monitoring.schemas import DashboardData
from service.system.router import memory

router = APIRouter(tags=["monitoring"])

DASHBOARD_HTML = Path(__file__).with_name("dashboard.html")
# The page loads nothing from anywhere: inline script and style, data from this origin only.
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"
)


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
    return HTMLResponse(
        _dashboard_page(), headers={"Content-Security-Policy": DASHBOARD_CSP, "Cache-Control": "no-store"}
    )


@router.get(
    "/dashboard/data",
    response_model=DashboardData,
    summary="What the dashboard polls: the memory report plus request totals per route",
)
def dashboard_data() -> DashboardData:
    return DashboardData(time=time.time(), memory=memory(), routes=route_stats())
