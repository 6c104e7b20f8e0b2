"""`POST /ocr` and `POST /ocr/batch`: sync routes, so decoding and recognition run in the threadpool."""

import time
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from service.error_handlers import error_examples
from service.exceptions import BadInput, TooLarge
from service.ocr.config import get_ocr_settings
from service.ocr.schemas import OcrBatchResponse, OcrOptions, OcrResponse
from service.ocr.service import ocr_batch, ocr_upload
from service.ocr.uploads import UploadLimitRoute

router = APIRouter(tags=["ocr"], route_class=UploadLimitRoute)


async def _one_file(request: Request) -> None:
    """`POST /ocr` reads one file: a second `file` part would otherwise be dropped without a word.
    (The form is already parsed for the route; Starlette returns it from its cache.)"""
    files = len((await request.form()).getlist("file"))
    if files > 1:
        raise BadInput(
            f"POST /ocr reads one file and got {files}; send several to POST /ocr/batch", files=files
        )


@router.post(
    "/ocr",
    response_model=OcrResponse,
    responses=error_examples(413, 415, 422, 503),
    dependencies=[Depends(_one_file)],
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
    started = time.perf_counter()
    settings = get_ocr_settings()
    if len(file) > settings.max_files:
        raise TooLarge(
            f"{len(file)} files in one request; at most OCR_MAX_FILES={settings.max_files}",
            files=len(file),
            max_files=settings.max_files,
        )
    return ocr_batch(file, options, started)
