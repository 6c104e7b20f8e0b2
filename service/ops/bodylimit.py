"""Request body size limit, enforced while the body streams in.

A declared Content-Length over the limit is answered 413 before any byte is read. Otherwise the
bytes are counted as the app reads them; at the limit the client gets 413 at once and the app is
told the client left (`http.disconnect`), so it stops reading and whatever it answers is dropped.
Two limits, by what the app does with the body:
- a multipart upload (`/ocr`, `/analyze/file`) is spooled to disk by the form parser as it
  arrives: MAX_BODY_MB, kept above OCR_MAX_UPLOAD_MB so the OCR route's own, more precise limit
  answers there first;
- any other body (JSON; with no content type FastAPI parses JSON too; any other type no route
  takes) is read whole into memory and parsed into objects many times its size: MAX_JSON_BODY_MB.
"""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.ocr.config import get_ocr_settings
from service.ops.asgi import header, passthrough, send_error
from service.ops.config import get_ops_settings

MB = 1024 * 1024
# Multipart boundaries and form fields around an upload (as in service/ocr/uploads.py), plus room
# to spare so the OCR route's limit is the one that answers on /ocr.
UPLOAD_SLACK_MB = 1.0


def is_upload(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "multipart/form-data"


def body_limit(scope: Scope) -> tuple[int, str]:
    """The byte limit for this request's body, and the setting that sets it."""
    settings = get_ops_settings()
    if not is_upload(header(scope, b"content-type")):
        return int(settings.max_json_body_mb * MB), f"MAX_JSON_BODY_MB={settings.max_json_body_mb:g}"
    limit_mb = max(settings.max_body_mb, get_ocr_settings().max_upload_mb + UPLOAD_SLACK_MB)
    return int(limit_mb * MB), f"MAX_BODY_MB={limit_mb:g}"


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if passthrough(scope):
            await self.app(scope, receive, send)
            return
        limit, setting = body_limit(scope)
        declared = header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await _too_large(scope, send, limit, setting)
            return

        received = 0
        started = answered = False

        async def counting_receive() -> Message:
            nonlocal received, answered
            if answered:
                return {"type": "http.disconnect"}
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                answered = True
                if not started:  # a response already streaming can only be cut short
                    await _too_large(scope, send, limit, setting)
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered and not started:
                return
            started = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)


async def _too_large(scope: Scope, send: Send, limit: int, setting: str) -> None:
    await send_error(
        scope,
        send,
        413,
        "too_large",
        f"the request body is larger than {setting} MB",
        limit_mb=round(limit / MB, 3),
    )
