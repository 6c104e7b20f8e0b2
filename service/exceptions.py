"""Errors the API answers with: each carries its HTTP status, a stable code and its details.

Plain Python on purpose: the OCR worker process raises these too, and must not import FastAPI
or pydantic to do so (`service/error_handlers.py` turns them into JSON responses).
"""

from typing import Any


class ServiceError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers
        self.details = details


class BadInput(ServiceError):
    status_code = 422
    code = "invalid_input"


class LanguageUndetected(ServiceError):
    """`lang: "auto"` could not tell a text's language: `too_short` or `unknown_language`."""

    status_code = 422

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.code = code


class UnsupportedTaskOrLang(ServiceError):
    status_code = 422
    code = "unsupported"


class ModelUnavailable(ServiceError):
    """The model could not be loaded: no hub, a missing dir, a broken export."""

    status_code = 503
    code = "model_unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 30, **details: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)}, **details)


class OverBudget(ServiceError):
    """Loading or running this would pass the memory budget; retry once memory frees up."""

    status_code = 503
    code = "over_memory_budget"

    def __init__(self, message: str, *, retry_after_s: int = 5, **details: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)}, **details)


class Overloaded(ServiceError):
    """The model's queue is full: refused at once rather than letting the queue grow."""

    status_code = 503
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1, **details: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)}, **details)


class TooLarge(ServiceError):
    status_code = 413
    code = "too_large"


class IngressFull(ServiceError):
    """The request bodies held in memory, all requests together, are at their ceiling (INGRESS_MAX_MB)."""

    status_code = 503
    code = "ingress_full"

    def __init__(self, message: str, *, retry_after_s: int = 2, **details: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)}, **details)
