"""The handlers that turn every failure into JSON, and the error body's schema.

Every error body has the same shape, `{"error": {"code", "message", ...details}}`, and no
traceback ever reaches a client: bad input is a 4xx, a model or memory problem a 503. The routes
that speak the Hugging Face inference protocol (`hf_protocol_path`) answer the same errors in TEI's
shape, `{"error": "<message>", "error_type": "<code>", ...details}`: huggingface_hub and
@huggingface/inference put `error` in their exceptions only when it is a string.
"""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import jsontext
from service.exceptions import ServiceError

logger = logging.getLogger(__name__)

# A 422 lists this many problems at most, each clipped, and says how many it left out: an error
# reply must stay small whatever the request (a list of a million bad items, a 1 MB key).
MAX_PROBLEMS = 10
MAX_PROBLEM_CHARS = 200


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class ErrorResponse(BaseModel):
    """Every error body, declared in the OpenAPI schema so clients can rely on its shape."""

    error: ErrorDetail


class ErrorJSONResponse(JSONResponse):
    """JSONResponse whose body is valid UTF-8 even when a detail echoes a lone surrogate (a JSON
    key or value the client sent): starlette's raised UnicodeEncodeError, a 500 instead of the 4xx."""

    def render(self, content: Any) -> bytes:
        return jsontext.dumps(content, allow_nan=False, separators=(",", ":")).encode()


class HfErrorResponse(BaseModel):
    """An error of the Hugging Face protocol's routes, as TEI answers it."""

    model_config = ConfigDict(extra="allow")

    error: str
    error_type: str


# The Hugging Face protocol's paths: TEI's (`/predict`, `/info`), the default model's endpoint root
# (`/`) and every model's (`/models/...`).
HF_PROTOCOL_PATHS = frozenset({"/", "/predict", "/info"})
HF_PROTOCOL_PREFIX = "/models/"


def hf_protocol_path(path: str) -> bool:
    return path in HF_PROTOCOL_PATHS or path.startswith(HF_PROTOCOL_PREFIX)


def error_response(
    status_code: int, code: str, message: str, headers=None, *, path: str = "", **details: Any
) -> JSONResponse:
    """The error body in the shape the route at `path` answers in (see the module's docstring)."""
    if hf_protocol_path(path):
        body: dict[str, Any] = {"error": message, "error_type": code, **details}
    else:
        body = {"error": {"code": code, "message": message, **details}}
    return ErrorJSONResponse(body, status_code, headers=headers)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_PROBLEM_CHARS else text[: MAX_PROBLEM_CHARS - 1] + "…"


def _describe_validation_error(error: dict[str, Any]) -> dict[str, Any]:
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
    return {"field": _clip(location), "problem": _clip(str(error.get("msg", "invalid")))}


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    return error_response(
        exc.status_code, exc.code, exc.message, exc.headers, path=request.url.path, **exc.details
    )


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors, path = exc.errors(), request.url.path
    problems = [_describe_validation_error(error) for error in errors[:MAX_PROBLEMS]]
    left_out = {"left_out": len(errors) - len(problems)} if len(errors) > len(problems) else {}
    if any(error.get("type") == "json_invalid" for error in errors):
        message = "the request body is not valid JSON"
        return error_response(400, "invalid_json", message, path=path, problems=problems, **left_out)
    summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
    if left_out:
        summary += f"; and {left_out['left_out']} more problem(s) not listed"
    return error_response(422, "invalid_input", summary, path=path, problems=problems, **left_out)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    headers = getattr(exc, "headers", None)
    return error_response(exc.status_code, "http_error", str(exc.detail), headers, path=request.url.path)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    message = "the server failed on this request; it keeps serving"
    return error_response(500, "internal_error", message, path=request.url.path)


def error_examples(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the error statuses a route can answer with."""
    descriptions = {
        400: "The body is not valid JSON.",
        413: "The upload or the work it implies is too large.",
        415: "The upload is not a supported kind of file.",
        422: "The input is invalid; the message says which field and why.",
        503: "The model cannot be loaded or the memory budget is full; see Retry-After.",
    }
    example = {"error": {"code": "invalid_input", "message": "text is empty or only whitespace"}}
    return {
        code: {
            "model": ErrorResponse,
            "description": descriptions[code],
            "content": {"application/json": {"example": example}},
        }
        for code in status_codes
    }


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
