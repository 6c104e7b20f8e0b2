"""The ops middlewares' answers, declared in the OpenAPI schema of every operation they can reach.

They answer before any route runs, so no route declares them itself. The schema is patched once,
when FastAPI first builds it, whatever routers were included before or after `install_ops`.
"""

from typing import Any

from fastapi import FastAPI

from service.error_handlers import ErrorResponse, HfErrorResponse, hf_protocol_path
from service.ops.admission import EXEMPT_PATHS as ADMISSION_EXEMPT
from service.ops.security import EXEMPT_PATHS as KEY_EXEMPT

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
# The Hugging Face protocol's routes answer the same errors in TEI's shape (service/error_handlers.py).
HF_ERROR_REF = {"$ref": "#/components/schemas/HfErrorResponse"}
BODY_METHODS = frozenset({"post", "put", "patch"})


def _ops_statuses(path: str, method: str) -> dict[int, str]:
    statuses = {}
    if path not in KEY_EXEMPT:
        statuses[401] = "API_KEY is set and the request does not carry it."
        statuses[429] = "More than RATE_LIMIT_PER_MIN requests a minute from this client; see Retry-After."
    if method in BODY_METHODS:
        statuses[408] = "The request body did not arrive within REQUEST_TIMEOUT_S."
        statuses[413] = "The body is larger than MAX_BODY_MB (an upload) or MAX_JSON_BODY_MB (any other)."
    if path not in ADMISSION_EXEMPT:
        statuses[503] = "Memory is over the hard limit, or the model or budget cannot serve; see Retry-After."
        statuses[504] = "The work did not finish within REQUEST_TIMEOUT_S."
    return statuses


def document_ops_responses(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (ErrorResponse, HfErrorResponse):
            if model.__name__ not in schemas:  # no route declared an error of this shape
                error_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(error_schema.pop("$defs", {}))
                schemas[model.__name__] = error_schema
        for path, operations in schema.get("paths", {}).items():
            ref = HF_ERROR_REF if hf_protocol_path(path) else ERROR_REF
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                for status, description in _ops_statuses(path, method).items():
                    responses.setdefault(
                        str(status),
                        {"description": description, "content": {"application/json": {"schema": ref}}},
                    )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
