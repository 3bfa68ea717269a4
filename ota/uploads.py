"""Streaming upload handler: files go to a temp file in chunks while sha256 is computed.

Memory stays flat whatever the size, and the size limit is enforced while streaming: past the
limit the upload stops, the temp file is removed, and the view reports ``too_large``.
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.core.files.uploadhandler import StopUpload, TemporaryFileUploadHandler
from django.http import QueryDict
from django.utils.datastructures import MultiValueDict


class HashingUploadHandler(TemporaryFileUploadHandler):
    """Every file part goes to disk (never memory) with its sha256 and size counted per chunk."""

    chunk_size = 1024 * 1024

    def __init__(self, request=None, max_bytes: int | None = None) -> None:
        super().__init__(request)
        self.max_bytes = settings.EDGEFLEET_MAX_UPLOAD_BYTES if max_bytes is None else max_bytes
        self.too_large: str | None = None  # the field whose file went over the limit
        self._hash = hashlib.sha256()
        self._size = 0

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        # A body that declares more than the limit (plus room for the form fields) stops at once.
        if content_length and content_length > self.max_bytes + 2 * 1024 * 1024:
            self.too_large = "file"
            return QueryDict(), MultiValueDict()
        return None

    def new_file(self, field_name, *args, **kwargs) -> None:
        super().new_file(field_name, *args, **kwargs)
        self._hash = hashlib.sha256()
        self._size = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self._size += len(raw_data)
        if self._size > self.max_bytes:
            self.too_large = self.field_name
            self.file.close()  # a TemporaryUploadedFile deletes itself on close
            raise StopUpload(connection_reset=False)
        self._hash.update(raw_data)
        self.file.write(raw_data)

    def file_complete(self, file_size: int) -> TemporaryUploadedFile:
        uploaded = super().file_complete(file_size)
        uploaded.sha256 = self._hash.hexdigest()
        return uploaded


def read_upload(request) -> tuple[QueryDict, MultiValueDict]:
    """Parse a multipart upload through ``HashingUploadHandler``; refusals raise ``RegistryError``.

    Must run before anything reads ``request.POST`` (views using it are ``csrf_exempt`` and check
    the CSRF token afterwards).
    """
    from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
    from django.http.multipartparser import MultiPartParserError

    from ota.services import RegistryError, too_large_error

    if not request.content_type.startswith("multipart/form-data"):
        raise RegistryError(
            "not_multipart",
            "Send the upload as multipart/form-data with a 'file' part (the .onnx model) and a 'label' field.",
            None,
        )
    handler = HashingUploadHandler(request)
    request.upload_handlers = [handler]
    try:
        post, files = request.POST, request.FILES
    except RequestDataTooBig as exc:
        raise RegistryError(
            "too_large", "The form fields are too large (notes at most 10,000 characters).", None, 413
        ) from exc
    except (TooManyFieldsSent, TooManyFilesSent, MultiPartParserError) as exc:
        raise RegistryError("bad_request", f"The upload is not a valid multipart form: {exc}", None) from exc
    if handler.too_large:
        raise too_large_error(handler.too_large)
    return post, files


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}
