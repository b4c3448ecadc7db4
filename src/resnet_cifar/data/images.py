"""One image file -> (32, 32, 3) uint8 RGB, the same way for training folders and `predict`.

Untrusted files are bounded before they are decoded: only regular files are opened (a FIFO or a
device named .jpg would block or never end), the size in the header is checked against
`bounds.MAX_IMAGE_PIXELS` after the JPEG decoder is told to downscale by up to 8x while decoding
(`Image.draft`), and large decoded images are box-reduced before any mode conversion. So a huge
file costs at most ~MAX_IMAGE_PIXELS x 4 bytes, not gigabytes.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .. import constants
from ..bounds import MAX_IMAGE_PIXELS
from ..errors import DataError, UsageError, describe

SIZE = constants.IMAGE_SIZE
DRAFT_SIZE = 8 * SIZE   # decode JPEGs at no less than this: keeps quality, drops the excess early
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_REDUCIBLE = ("RGB", "RGBA", "L", "LA", "I", "F")   # modes whose pixels may be box-averaged


class ImageTooLarge(DataError):
    """The header says more pixels than MAX_IMAGE_PIXELS; nothing was decoded."""


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8 RGB."""
    mode = im.mode
    if mode.startswith("I;16") or (mode == "I" and im.format == "PNG"):
        # 16-bit greyscale (a PNG opens as I;16, or I in older Pillow). PIL's own convert("L")
        # clips values above 255 to white, so scale the full 0..65535 range down ourselves.
        g = np.asarray(im).astype(np.float64) * (255.0 / 65535.0)
        g = np.clip(np.rint(g), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode in ("I", "F"):
        # 32-bit int / float greyscale from other formats: 8-bit range unless values say 16-bit.
        g = np.asarray(im).astype(np.float64)
        if g.size and g.max() > 255:
            g = g * (255.0 / 65535.0)
        g = np.clip(np.rint(g), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode in _ALPHA_MODES or "transparency" in im.info:
        # Transparency: composite on black (rgb * alpha). Fully transparent pixels often hold
        # arbitrary colours; compositing makes them a fixed value instead of leaking them in.
        rgba = np.asarray(im.convert("RGBA")).astype(np.uint16)
        return ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)
    if mode != "RGB":   # L, 1, P, CMYK, YCbCr, LAB, HSV, ...
        im = im.convert("RGB")
    return np.asarray(im)


def check_regular(path: Path) -> os.stat_result:
    """stat `path` (following links) and refuse anything but a regular file, without opening it."""
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(path)
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path} is not a regular file (a pipe, socket or device); remove it or pass a real image")
    return st


def _open_bounded(path: Path) -> Image.Image:
    """Open (header only), let JPEG decode downscaled, refuse more than MAX_IMAGE_PIXELS."""
    with warnings.catch_warnings():
        # our own limit below is the stricter one; PIL's warning would only be noise
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError:
            raise ImageTooLarge(f"image {path} has far more than {MAX_IMAGE_PIXELS:,} pixels; shrink it "
                                f"(e.g. to 32x32) or remove it") from None
    w, h = im.size
    if im.format == "JPEG" and min(w, h) > 2 * DRAFT_SIZE:
        im.draft(im.mode, (DRAFT_SIZE, DRAFT_SIZE))   # DCT scaling by 1/2, 1/4 or 1/8 while decoding
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        im.close()
        raise ImageTooLarge(f"image {path} is {w}x{h} ({w * h / 1e6:.0f} Mpx), more than the "
                            f"{MAX_IMAGE_PIXELS / 1e6:.0f} Mpx limit; shrink it (e.g. to 32x32) or remove it")
    return im


def _reduce(im: Image.Image) -> Image.Image:
    """Box-reduce a large decoded image to no less than DRAFT_SIZE before converting its mode."""
    factor = min(im.size) // DRAFT_SIZE
    if factor < 2 or im.mode not in _REDUCIBLE or "transparency" in im.info:
        return im
    return im.reduce(factor)


def load_image(path: str | Path) -> tuple[np.ndarray, bool]:
    """Read one image file as a (32, 32, 3) uint8 RGB array.

    Returns (array, resized): `resized` is True when the image was not 32x32 and was stretched to
    32x32 (bicubic; Pillow antialiases when shrinking). EXIF orientation is applied first.
    Raises DataError naming the file when it is truncated, not an image, not a regular file or
    too large; UsageError when it does not exist or is a directory.
    """
    path = Path(path)
    try:
        check_regular(path)
        with _open_bounded(path) as im:
            im.load()                       # decode now: truncated files fail here, not later
            im = ImageOps.exif_transpose(_reduce(im))
            arr = _to_rgb(im)
    except FileNotFoundError:
        raise UsageError(f"image {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not an image file") from None
    except PermissionError:
        raise DataError(f"cannot read image {path}: permission denied; fix its permissions") \
            from None
    except DataError:
        raise
    except Exception as e:  # any failure to decode means a bad file
        raise DataError(f"cannot read image {path} ({describe(e, 200)}); the file is "
                        f"corrupt or not an image: replace or remove it") from None
    resized = arr.shape[:2] != (SIZE, SIZE)
    if resized:
        # Stretch, not crop: the whole image is kept, like torchvision's Resize((32, 32)).
        arr = np.asarray(Image.fromarray(arr).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    return np.ascontiguousarray(arr, dtype=np.uint8), resized
