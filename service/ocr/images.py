"""Decoding an uploaded image safely: size checked from the header, then a small grayscale copy.

`open_image` reads only the header, so a decompression bomb is refused before its pixels are
allocated; JPEGs are set to decode at a reduced scale in grayscale (libjpeg's DCT scaling),
so a 12 MP photo decodes into 3 MB rather than 48. `prepare_image` then decodes,
converts to 8-bit grayscale (what Tesseract binarises anyway, at a quarter of RGB's memory),
downscales to OCR_MAX_SIDE and applies the EXIF orientation.

An image may hold several frames, and each is a page: a multi-page TIFF, an animated WebP or PNG
(APNG; each frame as the animation shows it). `frame_count` counts them without decoding any, and
`seek_frame` checks each page's header as the first one's before it decodes. A JPEG is one page:
the other images of an MPO file are, by its format, previews or other views of the same picture.
"""

import io
import struct

from PIL import Image, ImageChops, ImageFile

from service.exceptions import BadInput, TooLarge
from service.ocr.errors import Undecodable
from service.ocr.jobs import KIND_NAMES, JobLimits, Kind

PIL_FORMATS: dict[Kind, str] = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "webp": "WEBP"}
# Pillow keeps these modes at 1 byte per pixel, 16-bit ones at 2, every other mode at 4.
_ONE_BYTE_MODES = {"1", "L", "P"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def fit_within(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """`size` scaled down, aspect kept, so that neither side passes `max_side`."""
    width, height = size
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def bytes_per_pixel(mode: str) -> int:
    if mode in _ONE_BYTE_MODES:
        return 1
    return 2 if mode in _SIXTEEN_BIT_MODES else 4


def open_image(data: bytes, kind: Kind, limits: JobLimits) -> ImageFile.ImageFile:
    """Open the header only, check the pixel limits, and set JPEG's reduced-scale decoding."""
    # Pillow's own guard, a backstop behind the header check below: it raises on images over
    # twice this many pixels, wherever they are opened in the process.
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    try:
        image = Image.open(io.BytesIO(data), formats=[PIL_FORMATS[kind]])
    except Image.DecompressionBombError as error:  # Pillow's guard: over twice the limit
        raise TooLarge(
            f"the image has more than OCR_MAX_PIXELS={limits.max_pixels:,} pixels: {error}",
            limit_pixels=limits.max_pixels,
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise Undecodable(f"the {KIND_NAMES[kind]} image cannot be read: {error}") from error
    _check_frame(image, kind, limits)
    return image


def _check_frame(image: ImageFile.ImageFile, kind: Kind, limits: JobLimits) -> None:
    """The current frame's pixel limits from its header; JPEG's reduced-scale decoding set."""
    width, height = image.size
    if width * height > limits.max_pixels:
        raise TooLarge(
            f"the image is {width}x{height} = {width * height:,} pixels; "
            f"at most OCR_MAX_PIXELS={limits.max_pixels:,}",
            width=width,
            height=height,
            limit_pixels=limits.max_pixels,
        )
    if min(width, height) < limits.min_side:
        raise BadInput(
            f"the image is {width}x{height}; each side needs OCR_MIN_SIDE={limits.min_side} pixels or more",
            width=width,
            height=height,
        )
    if kind == "jpeg":
        image.info["coefficient_bytes"] = jpeg_coefficient_bytes(image)  # before draft() shrinks size
        image.draft("L", fit_within(image.size, limits.max_side))


def frame_count(data: bytes, image: ImageFile.ImageFile) -> int:
    """The image's frames, without decoding them: a TIFF's chain of directories walked here
    (Pillow's `n_frames` parses every directory's tags and checks each against a list of those
    seen: 0.28 s for 3,000 pages, 6.4 s for 30,000); WebP and APNG from their headers. A JPEG is
    one page (module docstring)."""
    if image.format == "TIFF":
        return tiff_directories(data)
    if image.format in ("WEBP", "PNG"):
        return getattr(image, "n_frames", 1)
    return 1


def tiff_directories(data: bytes) -> int:
    """Directories (pages) on a classic TIFF's chain, linear in their number: a directory whose
    entries run past the end of the file ends the chain, and so does one seen before (as Pillow
    does), found with one bit per byte of the file."""
    order = "<" if data[:2] == b"II" else ">"
    seen = bytearray(len(data) // 8 + 1)
    count, offset = 0, struct.unpack_from(order + "I", data, 4)[0]
    while offset > 0 and offset + 2 <= len(data) and not seen[offset >> 3] & (1 << (offset & 7)):
        seen[offset >> 3] |= 1 << (offset & 7)
        following = offset + 2 + 12 * struct.unpack_from(order + "H", data, offset)[0]
        if following + 4 > len(data):
            break
        count += 1
        offset = struct.unpack_from(order + "I", data, following)[0]
    return count


def seek_frame(image: ImageFile.ImageFile, number: int, kind: Kind, limits: JobLimits) -> None:
    """Make page `number` (1-based) the current frame and check it as `open_image` checked the first."""
    if image.tell() == number - 1:
        return
    try:
        image.seek(number - 1)
    except (EOFError, OSError, SyntaxError, ValueError) as error:
        raise Undecodable(f"page {number} of the {KIND_NAMES[kind]} image cannot be read: {error}") from error
    _check_frame(image, kind, limits)


def decoded_bytes(image: Image.Image) -> int:
    """Memory the decoded image will take, from its (draft-adjusted) header."""
    width, height = image.size
    return width * height * bytes_per_pixel(image.mode)


def jpeg_coefficient_bytes(image: Image.Image) -> int:
    """A progressive JPEG's coefficient buffers, which libjpeg keeps whole whatever the scale it
    decodes at: 2 bytes per coefficient, one per pixel of each component at its sampling."""
    if image.format != "JPEG" or not image.info.get("progressive"):
        return 0
    layers = getattr(image, "layer", None) or []
    if not layers:
        return 0
    h_max = max(layer[1] for layer in layers)
    v_max = max(layer[2] for layer in layers)
    width, height = image.size
    per_pixel = sum(h * v for _, h, v, _ in layers) / (h_max * v_max)
    return int(width * height * per_pixel * 2)


def check_work(image: Image.Image, limits: JobLimits) -> None:
    """Refuse, from the header, an image whose decode and gray copies alone pass OCR_WORK_MB.

    A cheap early answer only: the worker's memory cap is what bounds decoding whatever the header says."""
    need = decoded_bytes(image) + 3 * image.size[0] * image.size[1] + image.info.get("coefficient_bytes", 0)
    if need > limits.work_mb * 1024 * 1024:
        raise TooLarge(
            f"the image is {image.size[0]}x{image.size[1]} {image.mode}: decoding it takes "
            f"~{need / 2**20:.0f} MB, more than OCR_WORK_MB={limits.work_mb:g}; send a smaller image",
            width=image.size[0],
            height=image.size[1],
            limit_mb=limits.work_mb,
        )


def _to_grayscale(image: Image.Image) -> Image.Image:
    """8-bit gray, transparent pixels on white paper; at most two gray copies alive at once."""
    if image.mode == "L":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        return image.point(lambda value: value / 256).convert("L")  # convert() would clip at 255
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and ("transparency" in image.info or image.palette.mode == "RGBA")
    )
    if not has_alpha:
        return image.convert("L")
    # Transparent pixels are often black underneath: paper = 255 - (255 - gray) * alpha / 255.
    gray, alpha = image.convert("LA").split()
    ink = ImageChops.invert(gray)
    del gray
    return ImageChops.invert(ImageChops.multiply(ink, alpha))


def prepare_image(image: ImageFile.ImageFile, limits: JobLimits) -> Image.Image:
    """Decode, convert to grayscale, downscale and orient the image for recognition."""
    try:
        image.load()
        orientation = image.getexif().get(_EXIF_ORIENTATION)
        gray = _to_grayscale(image)
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise Undecodable(f"the {image.format} image cannot be decoded: {error}") from error
    except Image.DecompressionBombError as error:
        raise TooLarge(f"the image is a decompression bomb: {error}") from error
    target = fit_within(gray.size, limits.max_side)
    if target != gray.size:
        gray = gray.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    transpose = _TRANSPOSE_FOR_ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    return gray.transpose(transpose) if transpose is not None else gray
