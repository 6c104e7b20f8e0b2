"""Assembles the app. `service` is imported first: it pins threads before numeric imports."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

# First: FastAPI's own models are deferred only when this is the first import of fastapi.
from service.fastapi_import import FastAPI

# isort: split
from service.error_handlers import install_handlers
from service.lazy_routers import include_later
from service.monitoring.history import start_history, stop_history
from service.monitoring.middleware import MetricsMiddleware
from service.ops import install_ops, start_watchdog, stop_watchdog
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
# Not on the path to a spin-up's first answer: imported when first asked for (service/lazy_routers.py).
include_later(app, "service.protocol.router", ("/", "/predict", "/info", "/models"))
include_later(app, "service.ocr.router", ("/ocr",))
app.include_router(system_router)
include_later(app, "service.monitoring.router", ("/metrics", "/dashboard"))
install_ops(app)  # before the metrics middleware, so that it counts the ops answers too
app.add_middleware(MetricsMiddleware)
