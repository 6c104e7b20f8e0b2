"""The upload: its bytes read under a size limit, and what kind of file they really are.

The route stops a request body that passes the limit while it streams in (Starlette would
otherwise spool all of it to disk first) and refuses a file part past what it reads as it
arrives (`OcrRoute`, on service/forms.py); the file part is read in chunks, abandoned as soon as
it passes OCR_MAX_UPLOAD_MB.
The kind is decided by magic bytes, never by the file name; a declared content type that
disagrees with the content is refused, so a client learns what it actually sent.
"""

from collections.abc import Callable

from fastapi import UploadFile

from service.exceptions import BadInput, ServiceError, TooLarge
from service.forms import FormRoute
from service.ocr.config import get_ocr_settings
from service.ocr.errors import UnsupportedMedia
from service.ocr.jobs import KIND_NAMES, Kind

MB = 1024 * 1024
CHUNK_BYTES = MB
# Multipart boundaries and the small form fields around the file.
MULTIPART_SLACK_BYTES = 64 * 1024

DECLARED_KINDS: dict[str, Kind] = {
    "application/pdf": "pdf",
    "application/x-pdf": "pdf",
    "image/png": "png",
    "image/x-png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/pjpeg": "jpeg",
    "image/tiff": "tiff",
    "image/webp": "webp",
}
# Types that say nothing about the content: the bytes decide.
UNSPECIFIC_TYPES = {"", "application/octet-stream", "binary/octet-stream"}


class OcrRoute(FormRoute):
    """The OCR routes' forms: the body is refused past OCR_MAX_UPLOAD_MB (and the multipart slack)
    while it streams in, not at its end; `/ocr/batch` reads at most OCR_MAX_FILES files, and `/ocr`
    one (service/forms.py refuses the next file part as it arrives)."""

    def body_limit(self) -> tuple[int, Callable[[], ServiceError]]:
        limit_mb = get_ocr_settings().max_upload_mb
        return int(limit_mb * MB) + MULTIPART_SLACK_BYTES, lambda: _too_large(limit_mb)

    def many_files(self) -> int:
        return get_ocr_settings().max_files

    def refuse_file(self, count: int) -> ServiceError:
        if not self.reads_many_files:
            return BadInput("POST /ocr reads one file; send several to POST /ocr/batch", files=count)
        limit = self.many_files()
        return TooLarge(
            f"more than {limit} files in one request (the file part {count} was refused before it was "
            f"read); at most OCR_MAX_FILES={limit}",
            files=count,
            max_files=limit,
        )


def _too_large(limit_mb: float) -> TooLarge:
    return TooLarge(f"the upload is larger than OCR_MAX_UPLOAD_MB={limit_mb:g} MB", limit_mb=limit_mb)


def read_uploads(uploads: list[UploadFile], limit_mb: float) -> list[bytes]:
    """Each file's bytes (empty ones too: each file is judged on its own), all of them together
    within `limit_mb`."""
    read: list[bytes] = []
    for upload in uploads:
        read.append(_read_within(upload, limit_mb, sum(map(len, read))))
    return read


def _read_within(upload: UploadFile, limit_mb: float, already: int) -> bytes:
    chunks: list[bytes] = []
    total = already
    while chunk := upload.file.read(CHUNK_BYTES):
        total += len(chunk)
        if total > limit_mb * MB:
            raise _too_large(limit_mb)
        chunks.append(chunk)
    return b"".join(chunks)


def sniff_kind(data: bytes) -> Kind | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if b"%PDF-" in data[:1024]:  # readers accept a header anywhere in the first 1 KiB
        return "pdf"
    return None


def check_kind(data: bytes, declared_type: str | None) -> Kind:
    """The kind of the content, refusing unknown content and a contradicting declaration."""
    declared = (declared_type or "").split(";")[0].strip().lower()
    kind = sniff_kind(data)
    if kind is None:
        raise UnsupportedMedia(
            "the upload is not a PNG, JPEG, TIFF or WebP image nor a PDF "
            f"(declared as {declared or 'nothing'}, starts with {data[:8]!r})",
            declared_content_type=declared or None,
        )
    if declared not in UNSPECIFIC_TYPES and DECLARED_KINDS.get(declared) != kind:
        raise UnsupportedMedia(
            f"the upload was declared as {declared} but its content is {KIND_NAMES[kind]}",
            declared_content_type=declared,
            detected=kind,
        )
    return kind
