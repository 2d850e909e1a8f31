"""Image loading for the network: any PNG/JPEG -> ``[3,224,224]`` float in [0, 1].

Rules (documented in the README): the EXIF orientation is applied; transparent pixels
are composited onto white; grayscale, palette, 16-bit and CMYK images are converted to
8-bit RGB; a non-square image is centre-cropped to a square, then resized (bilinear) to
``size``. Images over :data:`MAX_IMAGE_PIXELS` are refused from their header, before
decoding; large ones are reduced in 8 bits before any float copy is made.
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import torch
from torch import Tensor

__all__ = ["ImageFileError", "load_image", "rgba_to_rgb_on_white", "to_uint8", "MAX_IMAGE_PIXELS"]

#: Refuse images larger than this before decoding them (bounded memory: below PIL's own
#: 89.5 MP decompression-bomb limit, so this is the one limit that applies).
MAX_IMAGE_PIXELS = 64_000_000
log = logging.getLogger(__name__)


class ImageFileError(ValueError):
    """An image that is missing, unreadable or not a supported picture."""


def to_uint8(image: np.ndarray) -> np.ndarray:
    """``[0, 1]`` floats -> uint8, rounded to nearest (the one conversion the package uses)."""
    return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def rgba_to_rgb_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite an 8-bit ``[H,W,4]`` RGBA array onto white -> float32 ``[H,W,3]`` in [0,1]."""
    rgb = rgba[..., :3].astype(np.float32) / 255.0
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    return rgb * alpha + (1.0 - alpha)


def _to_rgba8(image):
    """Any PIL mode -> 8-bit RGBA (16-bit and 32-bit integer images are rescaled)."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGBA")
    if image.mode == "F":
        gray = np.clip(np.asarray(image, dtype=np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGBA")
    if image.mode == "P":
        image = image.convert("RGBA")  # keeps palette transparency
    if image.mode == "CMYK":
        image = image.convert("RGB")
    return image.convert("RGBA")


def load_image(path: str | os.PathLike, size: int = 224) -> Tensor:
    """Read an image file as a ``[3,size,size]`` float tensor in [0, 1] (rules in the module doc).

    Raises:
        ImageFileError: naming the file, for a missing, empty, truncated, oversized or
            unrecognised file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if os.path.isdir(path):
        raise ImageFileError(f"{path}: expected an image file, got a directory")
    pil_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None  # the header check below is the one limit (with its own message)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise ImageFileError(f"{path}: expected at most {MAX_IMAGE_PIXELS:,} pixels, got {width}x{height}")
                image.draft("RGB", (size, size))  # JPEG: decode at reduced scale when large
                rgba = _to_rgba8(ImageOps.exif_transpose(image))
                rgba.load()
    except ImageFileError:
        raise
    except FileNotFoundError:
        raise ImageFileError(f"{path}: expected an image file, got no such file") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageFileError(f"{path}: expected a PNG or JPEG image, got {type(error).__name__}: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageFileError(f"{path}: expected a readable PNG or JPEG image, got a corrupt file ({error})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    width, height = rgba.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    if width != height:
        rgba = rgba.crop((left, top, left + side, top + side))
    alpha = rgba.getchannel("A")
    if alpha.getextrema()[1] == 0:
        log.warning("%s: the image is fully transparent (no foreground); the mesh will be a guess", path)
    if side > 2 * size:  # composite on white and box-reduce in 8 bits: no full-resolution float copy
        on_white = Image.new("RGB", rgba.size, (255, 255, 255))
        on_white.paste(rgba, mask=alpha)
        del rgba, alpha
        rgba = on_white.reduce(side // (2 * size)).convert("RGBA")
        side = rgba.size[0]
    if side != size:
        # Composite onto white before resizing so edges blend with white, not hidden colours.
        rgb = Image.fromarray((rgba_to_rgb_on_white(np.asarray(rgba)) * 255.0 + 0.5).astype(np.uint8), "RGB")
        array = np.asarray(rgb.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    else:
        array = rgba_to_rgb_on_white(np.asarray(rgba))
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
