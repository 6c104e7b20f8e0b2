"""FastAPI, imported with its own pydantic models left unbuilt until something uses them, and
without `pydantic.v1` until something imports it.

Importing FastAPI builds the validators and serializers of the OpenAPI document's ~40 models
(`fastapi.openapi.models`) and a few more: ~0.04 s of CPU at full speed, ~0.4 s of waiting at
Render's 0.1 CPU, before a first answer that never uses them (only `/openapi.json` does). Pydantic's
`defer_build` leaves each to its first use; it is on only while FastAPI's modules run, so the app's
own models are built as before. Import `FastAPI` from here before anything imports `fastapi`.

FastAPI refuses pydantic v1 models: for every route's body and response type it asks whether the
type is one, and the question imports the whole `pydantic.v1` package (23 modules, MEMORY.md issue
22) that no route here uses. A class can only be a v1 model once `pydantic.v1` is imported, so
until then the answer is no without importing it; once anything has imported it, FastAPI's own
check runs as before.
"""

import sys
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

_config = BaseModel.model_config  # every model's config starts from its bases' (pydantic's ConfigWrapper)
_config["defer_build"] = True
try:
    from fastapi import FastAPI
finally:
    del _config["defer_build"]

from fastapi._compat import shared as _shared  # noqa: E402  (after FastAPI's deferred import)


def _unless_v1_is_absent(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def is_v1(value: Any) -> bool:
        return "pydantic.v1" in sys.modules and check(value)

    return is_v1


# `annotation_is_pydantic_v1` (route declarations) calls it through its module's globals.
_shared.is_pydantic_v1_model_class = _unless_v1_is_absent(_shared.is_pydantic_v1_model_class)

__all__ = ["FastAPI"]
