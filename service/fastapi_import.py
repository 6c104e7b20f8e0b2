"""FastAPI, imported with its own pydantic models left unbuilt until something uses them.

Importing FastAPI builds the validators and serializers of the OpenAPI document's ~40 models
(`fastapi.openapi.models`) and a few more: ~0.04 s of CPU at full speed, ~0.4 s of waiting at
Render's 0.1 CPU, before a first answer that never uses them (only `/openapi.json` does). Pydantic's
`defer_build` leaves each to its first use; it is on only while FastAPI's modules run, so the app's
own models are built as before. Import `FastAPI` from here before anything imports `fastapi`.
"""

from pydantic import BaseModel

_config = BaseModel.model_config  # every model's config starts from its bases' (pydantic's ConfigWrapper)
_config["defer_build"] = True
try:
    from fastapi import FastAPI
finally:
    del _config["defer_build"]

__all__ = ["FastAPI"]
