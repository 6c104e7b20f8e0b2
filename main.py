"""Assembles the app. `service` is imported first: it pins threads before numeric imports."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.error_handlers import install_handlers
from service.monitoring.history import start_history, stop_history
from service.monitoring.middleware import MetricsMiddleware
from service.monitoring.router import router as monitoring_router
from service.ocr.router import router as ocr_router
from service.ops import install_ops, start_watchdog, stop_watchdog
from service.protocol.router import router as protocol_router
from service.sentiment.router import router as sentiment_router
from service.startup import throughput
from service.system.router import router as system_router


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    watchdog = start_watchdog()
    start_history(refusing=lambda: watchdog is not None and watchdog.refusing)
    try:
        with throughput():  # hardware config logged once; micro-batching workers until shutdown
            yield
    finally:
        stop_history()
        stop_watchdog()


app = FastAPI(
    lifespan=lifespan,
    title="pysentimiento in 512 MB",
    description="Sentiment, emotion, hate speech and irony of Spanish and English social-media text, "
    "served by pysentimiento's models inside a 512 MB memory budget.",
    version="0.1.0",
)
install_handlers(app)
app.include_router(sentiment_router)
app.include_router(protocol_router)
app.include_router(ocr_router)
app.include_router(system_router)
app.include_router(monitoring_router)
install_ops(app)  # before the metrics middleware, so that it counts the ops answers too
app.add_middleware(MetricsMiddleware)
