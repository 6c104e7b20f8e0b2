"""`install_ops`: the ops middlewares, in the order a request meets them, and their OpenAPI entries."""

from service.fastapi_import import FastAPI
from service.ops.admission import AdmissionMiddleware
from service.ops.bodylimit import BodyLimitMiddleware
from service.ops.openapi import document_ops_responses
from service.ops.ratelimit import RateLimitMiddleware
from service.ops.redaction import install as redact_logs
from service.ops.security import ApiKeyMiddleware
from service.ops.timeout import TimeoutMiddleware


def install_ops(app: FastAPI) -> None:
    """Add the ops middlewares; call it before adding middleware that must see their answers.

    Each `add_middleware` wraps the ones before it, so from the outside a request meets: the API
    key (a failed check spends its address's rate-limit bucket), the rate limit (keyed on the key
    it checked, so requests without it cannot spend its quota), the watchdog's admission, the
    timeout (which covers reading the body), then the body limit. Log records are redacted from
    here on, whatever writes them (`redaction.py`): uvicorn's access log carries request targets.
    """
    redact_logs()
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(TimeoutMiddleware)
    app.add_middleware(AdmissionMiddleware)
    app.add_middleware(RateLimitMiddleware)
    app.add_middleware(ApiKeyMiddleware)
    document_ops_responses(app)
