"""Form bodies, parsed under bounds before a route sees them: one mechanism for every form route.

Starlette's multipart parser keeps each file part up to 1 MiB in memory before it spools it to
disk, and parses every part whatever the route reads: five concurrent requests of 95 parts of
~1 MB were an OOM kill (issue 21). `FormRoute` parses the form itself, before FastAPI asks for it
(FastAPI then gets this parsed form), and:
- writes a file part to disk from its first byte past SPOOL_BYTES, and gives the bytes it wrote
  back to the request's ingress account (service/ingress.py), so only what stays in memory (small
  parts, form fields) counts against INGRESS_MAX_MB;
- refuses a file part past the route's count as its headers arrive, before any of it is read: a
  route that reads one file (one `UploadFile` parameter) refuses a second with 422; a route that
  reads a list of them (`list[UploadFile]`) refuses part `many_files() + 1` with 413;
- bounds form fields: at most MAX_FIELDS, each at most MAX_FIELD_BYTES (422 past either), for
  urlencoded forms too.
"""

import typing
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any

from fastapi import Request, Response, UploadFile, params
from fastapi.routing import APIRoute
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, Headers
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.types import Message

from service.exceptions import BadInput, ServiceError, TooLarge
from service.ingress import Account, account_of

KB = 1024
# A file part past this is on disk; below it, in memory (and counted in the ingress ledger).
SPOOL_BYTES = 64 * KB
# Form fields (options such as `lang`, `text_column`): how many, and how long each.
MAX_FIELDS = 32
MAX_FIELD_BYTES = 64 * KB
# File parts of a route that takes a list of files and sets no count of its own (`many_files`).
MAX_FILES = 32


class _BoundedMultiPartParser(MultiPartParser):
    spool_max_size = SPOOL_BYTES

    def __init__(
        self,
        headers: Headers,
        stream: AsyncGenerator[bytes, None],
        max_files: int,
        refuse_file: Callable[[int], ServiceError],
        account: Account | None,
    ) -> None:
        super().__init__(
            headers,
            self._accounted(stream),
            max_files=max_files,
            max_fields=MAX_FIELDS,
            max_part_size=MAX_FIELD_BYTES,
        )
        self._refuse_file = refuse_file
        self._account = account
        self._field_bytes = 0
        self._file_sizes: dict[UploadFile, int] = {}  # file parts' sizes so far

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._current_part.content_disposition)
        if b"filename" in options and self._current_files >= self.max_files:
            raise self._refuse_file(self._current_files + 1)
        super().on_headers_finished()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        super().on_part_data(data, start, end)
        if self._current_part.file is None:
            self._field_bytes += end - start
        else:
            upload = self._current_part.file
            self._file_sizes[upload] = self._file_sizes.get(upload, 0) + end - start

    def _in_memory(self) -> int:
        """Bytes the parsed form keeps in memory: fields, and file parts not rolled over to disk."""
        return self._field_bytes + sum(size for size in self._file_sizes.values() if size <= SPOOL_BYTES)

    async def _accounted(self, stream: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        """The body's chunks; once the parser has handled one (this generator resumes only then),
        the chunk is given back to the account and what the form kept of it is held instead."""
        kept = 0
        async for chunk in stream:
            yield chunk
            if self._account is not None:
                now = self._in_memory()
                self._account.give(len(chunk))
                if now >= kept:
                    self._account.take(now - kept)
                else:
                    self._account.give(kept - now)
                kept = now


class FormRequest(Request):
    """A request whose form is parsed by `_BoundedMultiPartParser` (or Starlette's urlencoded
    parser under the same field bounds), whatever limits FastAPI asks for."""

    max_files: int = 1
    refuse_file: Callable[[int], ServiceError]

    async def _get_form(self, **_: Any) -> FormData:
        if self._form is None:
            media = (self.headers.get("content-type") or "").split(";")[0].strip().lower()
            try:
                if media == "multipart/form-data":
                    parser: MultiPartParser | FormParser = _BoundedMultiPartParser(
                        self.headers, self.stream(), self.max_files, self.refuse_file, account_of(self.scope)
                    )
                elif media == "application/x-www-form-urlencoded":
                    parser = FormParser(
                        self.headers, self.stream(), max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES
                    )
                else:
                    self._form = FormData()
                    return self._form
                self._form = await parser.parse()
            except MultiPartException as error:
                raise BadInput(
                    f"the form is invalid: {error.message} (at most {MAX_FIELDS} fields of "
                    f"{MAX_FIELD_BYTES // KB} KB each)"
                ) from None
        return self._form


class FormRoute(APIRoute):
    """A route whose form (if it takes one) is parsed by `FormRequest`, and whose body may have a
    limit of its own (`body_limit`), enforced while it streams in."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        forms = [f for f in self.dependant.body_params if isinstance(f.field_info, params.Form)]
        self.takes_form = bool(forms)
        self.reads_many_files = any(
            typing.get_origin(f.field_info.annotation) is list
            and typing.get_args(f.field_info.annotation) == (UploadFile,)
            for f in forms
        )

    def many_files(self) -> int:
        """How many file parts a route that takes a list of files reads; override where it is set."""
        return MAX_FILES

    def refuse_file(self, count: int) -> ServiceError:
        """The answer to file part number `count`, one past what the route reads."""
        methods = "/".join(sorted(self.methods))
        if not self.reads_many_files:
            return BadInput(
                f"{methods} {self.path} reads one file; a second file part was refused", files=count
            )
        limit = self.many_files()
        return TooLarge(f"more than {limit} files in one request", files=count, max_files=limit)

    def body_limit(self) -> tuple[int, Callable[[], ServiceError]] | None:
        """This route's own body limit in bytes and its error, when it has one."""
        return None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            receive = request.receive
            limited = self.body_limit()
            if limited is not None:
                limit, too_large = limited
                declared = request.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise too_large()
                received = 0

                async def receive() -> Message:
                    nonlocal received
                    message = await request.receive()
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise too_large()
                    return message

            if not self.takes_form:
                return await handler(Request(request.scope, receive) if limited else request)
            form_request = FormRequest(request.scope, receive)
            form_request.max_files = self.many_files() if self.reads_many_files else 1
            form_request.refuse_file = self.refuse_file
            await form_request.form()  # parsed here, so its errors are ours, not FastAPI's 400
            return await handler(form_request)

        return bounded
