"""`POST /ocr` and `POST /ocr/batch`: sync routes, so decoding and recognition run in the threadpool."""

import time
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from service.error_handlers import error_examples
from service.ocr.schemas import OcrBatchResponse, OcrOptions, OcrResponse
from service.ocr.service import ocr_batch, ocr_upload
from service.ocr.uploads import OcrRoute

router = APIRouter(tags=["ocr"], route_class=OcrRoute)


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
    return ocr_upload(file, options, time.perf_counter())


@router.post(
    "/ocr/batch",
    response_model=OcrBatchResponse,
    responses=error_examples(413, 422, 503),
    summary="Several images and PDFs in one request: results per file, in order, a bad file its own error",
)
def ocr_files(
    file: Annotated[
        list[UploadFile],
        File(description="The files, as repeated `file` parts (at most OCR_MAX_FILES); read in order."),
    ],
    options: Annotated[OcrOptions, Form()],
) -> OcrBatchResponse:
    return ocr_batch(file, options, time.perf_counter())
