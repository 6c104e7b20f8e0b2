"""Operational settings: access control, request limits and the memory watchdog.

Kept apart from `service.config` (like `service.ocr.config`) so that this package owns its knobs.
Read per request through the cached `get_ops_settings()`, never frozen into a middleware, so a
test that clears the cache sees new values.
"""

from functools import lru_cache

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class OpsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Unset or empty: no key is asked for. Sent as `Authorization: Bearer <key>` or `X-API-Key`.
    api_key: SecretStr | None = None
    # Requests per minute per client address (token bucket of that size); unset: no limit.
    rate_limit_per_min: int | None = Field(default=None, gt=0)
    # A multipart upload (spooled to disk as it arrives); raised to above OCR_MAX_UPLOAD_MB so the
    # OCR route's own limit answers first.
    max_body_mb: float = Field(default=100, gt=0)
    # Any other body (JSON): read whole into memory and parsed into objects many times its size.
    max_json_body_mb: float = Field(default=2, gt=0)
    # Request bodies held in memory by all requests together (service/ingress.py); unset: an
    # eighth of the memory budget (64 MB of 512).
    ingress_max_mb: float | None = Field(default=None, gt=0)
    # A request body must arrive at least this fast, averaged from its first byte once
    # BODY_RATE_GRACE_S have passed, else 408 and the connection is closed (ops/connections.py).
    body_min_rate_kb_s: float = Field(default=1.0, ge=0)
    body_rate_grace_s: float = Field(default=5.0, gt=0)
    # Until the response starts; 0 turns it off. Sync routes cannot be stopped: see ops/timeout.py.
    request_timeout_s: float = Field(default=120, ge=0)
    # A request's headers must arrive within this of its first byte, else 408 and the connection is
    # closed (ops/connections.py); so must the unread rest of a body the app answered early.
    header_timeout_s: float = Field(default=10, gt=0)
    # Open connections past this are answered 503 at once and closed; lowered to what the
    # descriptor limit leaves room for (ops/connections.py).
    max_connections: int = Field(default=500, gt=0)

    memory_watchdog: bool = True
    watchdog_interval_s: float = Field(default=1.0, gt=0)
    # Fractions of the memory budget's limit: cleanup at the soft one, refuse new work at the hard one.
    memory_soft_limit: float = Field(default=0.85, gt=0, le=1)
    memory_hard_limit: float = Field(default=0.95, gt=0, le=1)
    # At the hard limit, once nothing is in flight and cleanup did not help: exit so that a supervisor
    # starts a fresh worker. Off unless one does: `service/ops/supervise.sh` (start.sh) turns it on.
    # Not more often than once per RECYCLE_MIN_UPTIME_S of a worker's life: each costs a cold start.
    recycle_on_hard_limit: bool = False
    recycle_min_uptime_s: float = Field(default=60, ge=0)

    @field_validator("api_key", "rate_limit_per_min", "ingress_max_mb", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`API_KEY=` in a .env or a dashboard means "no key", not an empty key that matches nothing
        (and an empty limit means its default)."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("memory_hard_limit")
    @classmethod
    def _hard_above_soft(cls, value: float, info) -> float:
        soft = info.data.get("memory_soft_limit")
        if soft is not None and value <= soft:
            raise ValueError(f"MEMORY_HARD_LIMIT ({value}) must be above MEMORY_SOFT_LIMIT ({soft})")
        return value


@lru_cache
def get_ops_settings() -> OpsSettings:
    return OpsSettings()
