"""Request bodies: their size, and what all requests together hold of them in memory.

A declared Content-Length over the limit is answered 413 before any byte is read. Otherwise the
bytes are counted as the app reads them; at the limit the client gets 413 at once and the app is
told the client left (`http.disconnect`), so it stops reading and whatever it answers is dropped.
Two limits, by what the app does with the body:
- a multipart upload (`/ocr`, `/analyze/file`) is written to disk by the form parser as it
  arrives (service/forms.py): MAX_BODY_MB, kept above OCR_MAX_UPLOAD_MB so the OCR route's own,
  more precise limit answers there first;
- any other body (JSON; with no content type FastAPI parses JSON too; any other type no route
  takes) is read whole into memory and parsed into objects many times its size: MAX_JSON_BODY_MB.
  So is the part of any body the app keeps in memory: a multipart body sent to a route that
  reads it whole is held to MAX_JSON_BODY_MB too.

Every request's body bytes are also counted in the process-wide ingress ledger (service/ingress.py):
a declared body that is not an upload reserves its length before it is read, every byte read is
held until the request ends unless the form parser gives it back, and past INGRESS_MAX_MB the
request asking for more gets 503 + Retry-After and its connection is closed.
"""

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.exceptions import IngressFull
from service.ingress import LEDGER, MB, SCOPE_KEY, Account
from service.ocr.config import get_ocr_settings
from service.ops.asgi import header, passthrough, send_error
from service.ops.config import get_ops_settings
from service.registry import get_registry

# Multipart boundaries and form fields around an upload (as in service/ocr/uploads.py), plus room
# to spare so the OCR route's limit is the one that answers on /ocr.
UPLOAD_SLACK_MB = 1.0
# INGRESS_MAX_MB unset: this share of the memory budget.
INGRESS_SHARE = 1 / 8


def is_upload(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "multipart/form-data"


def body_limit(scope: Scope) -> tuple[int, str]:
    """The byte limit for this request's body, and the setting that sets it."""
    settings = get_ops_settings()
    if not is_upload(header(scope, b"content-type")):
        return int(settings.max_json_body_mb * MB), f"MAX_JSON_BODY_MB={settings.max_json_body_mb:g}"
    limit_mb = max(settings.max_body_mb, get_ocr_settings().max_upload_mb + UPLOAD_SLACK_MB)
    return int(limit_mb * MB), f"MAX_BODY_MB={limit_mb:g}"


def ingress_ceiling_mb() -> float:
    """INGRESS_MAX_MB, or its share of the memory budget."""
    configured = get_ops_settings().ingress_max_mb
    return configured if configured is not None else get_registry().budget.limit_mb * INGRESS_SHARE


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if passthrough(scope):
            await self.app(scope, receive, send)
            return
        limit, setting = body_limit(scope)
        settings = get_ops_settings()
        in_memory = int(settings.max_json_body_mb * MB)
        json_setting = f"MAX_JSON_BODY_MB={settings.max_json_body_mb:g}"
        declared_text = (header(scope, b"content-length") or "").strip()
        declared = int(declared_text) if declared_text.isdigit() else None
        if declared is not None and declared > limit:
            await _too_large(scope, send, limit, setting)
            return

        LEDGER.ceiling_bytes = int(ingress_ceiling_mb() * MB)
        account = scope[SCOPE_KEY] = Account()
        try:
            if declared and not is_upload(header(scope, b"content-type")):
                account.reserve(declared)
        except IngressFull as full:
            await _refuse(scope, send, full)
            return

        received = 0
        started = answered = False

        async def counting_receive() -> Message:
            nonlocal received, answered
            if answered:
                return {"type": "http.disconnect"}
            message = await receive()
            size = len(message.get("body", b""))
            received += size
            try:
                account.take(size)
            except IngressFull as full:
                answered = True
                if not started:
                    await _refuse(scope, send, full)
                return {"type": "http.disconnect"}
            if received > limit or account.held > in_memory:
                answered = True
                if not started:  # a response already streaming can only be cut short
                    if received > limit:
                        await _too_large(scope, send, limit, setting)
                    else:
                        await _too_large(scope, send, in_memory, json_setting, "held in memory ")
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered and not started:
                return
            started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except ClientDisconnect:
            # The client left (or was answered here) while the app read the body: nothing to
            # answer, nothing to log. Raised on, the exception would keep the frames that hold the
            # body's chunks alive in a reference cycle (the timeout's task holds it) until a gc.
            pass
        finally:
            account.close()


async def _refuse(scope: Scope, send: Send, full: IngressFull) -> None:
    """503 + Retry-After, and the connection closed: the unread rest of the body is not wanted."""
    headers = {**(full.headers or {}), "Connection": "close"}
    await send_error(scope, send, full.status_code, full.code, full.message, headers, **full.details)


async def _too_large(scope: Scope, send: Send, limit: int, setting: str, held: str = "") -> None:
    await send_error(
        scope,
        send,
        413,
        "too_large",
        f"the request body {held}is larger than {setting} MB",
        limit_mb=round(limit / MB, 3),
    )
