"""The OCR route's own errors, rendered like every other `ServiceError`."""

from service.exceptions import BadInput, ServiceError


class UnsupportedMedia(ServiceError):
    """Not an image or PDF kind we read, or not the kind the client declared."""

    status_code = 415
    code = "unsupported_media_type"


class Undecodable(BadInput):
    """The bytes are of a supported kind but cannot be decoded: truncated or corrupt."""

    code = "undecodable_file"


class EncryptedPdf(BadInput):
    code = "encrypted_pdf"
