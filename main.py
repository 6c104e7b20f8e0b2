"""Assembles the app. `service` is imported first: it pins threads before numeric imports."""

from fastapi import FastAPI

from service.exceptions import install_handlers
from service.monitoring.middleware import MetricsMiddleware
from service.monitoring.router import router as monitoring_router
from service.ocr.router import router as ocr_router
from service.sentiment.router import router as sentiment_router
from service.system.router import router as system_router

app = FastAPI(
    title="pysentimiento in 512 MB",
    description="Sentiment, emotion, hate speech and irony of Spanish and English social-media text, "
    "served by pysentimiento's models inside a 512 MB memory budget.",
    version="0.1.0",
)
install_handlers(app)
app.include_router(sentiment_router)
app.include_router(ocr_router)
app.include_router(system_router)
app.include_router(monitoring_router)
app.add_middleware(MetricsMiddleware)
