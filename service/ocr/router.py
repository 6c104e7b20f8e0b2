"""`POST /ocr`: a sync route, so decoding and recognition run in the threadpool."""

import time
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from service.error_handlers import error_examples
from service.ocr.config import get_ocr_settings
from service.ocr.schemas import OcrOptions, OcrResponse
from service.ocr.service import ocr_upload
from service.ocr.uploads import UploadLimitRoute, read_upload

router = APIRouter(tags=["ocr"], route_class=UploadLimitRoute)


@router.post(
    "/ocr",
    response_model=OcrResponse,
    responses=error_examples(413, 415, 422, 503),
    summary="Text of an image (PNG, JPEG, TIFF, WebP) or a PDF's pages, optionally with its sentiment",
)
def ocr(
    file: Annotated[UploadFile, File(description="The image or PDF; its kind is read from its content.")],
    options: Annotated[OcrOptions, Form()],
) -> OcrResponse:
    started = time.perf_counter()
    data = read_upload(file, get_ocr_settings().max_upload_mb)
    return ocr_upload(data, file.content_type, options, started)
