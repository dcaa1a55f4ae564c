"""Image bytes from a request (`{"b64": ...}`) -> float32 pixels, exactly as the data stage reads image files.

The decoding itself is the data stage's (`compiler.data.images.decode_image`: TensorFlow's
decoder, the channels converted, a bilinear resize to the model's input size, values 0..255),
so a served image gives the same prediction as `kspec predict` on the same file. Before any
pixel is decoded, the header's width x height is bounded with Pillow (a small PNG can claim a
huge canvas: a decompression bomb).
"""

from __future__ import annotations

import io

import numpy as np

from .defaults import MAX_IMAGE_PIXELS


class ImageError(ValueError):
    """The bytes are not an image kspec can read, or too large; the message says which."""


def decode_image(data: bytes, size: tuple[int, int], mode: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """(height, width, channels) float32 pixels of the image in `data`, resized to `size`."""
    from PIL import Image, UnidentifiedImageError

    from ..data.images import decode_image as decode
    from ..data.sources import COLOR_MODES, IMAGE_FORMATS

    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if probe.format not in IMAGE_FORMATS:
                raise ImageError(f"is a {probe.format} image; kspec reads {'/'.join(IMAGE_FORMATS)}")
    except UnidentifiedImageError:
        raise ImageError(f"does not decode as an image ({'/'.join(IMAGE_FORMATS)})") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"does not decode as an image: {exc}") from None
    if width * height > max_pixels:
        raise ImageError(f"is {width}x{height} pixels, more than the limit of {max_pixels:,} (--max-image-pixels)")
    import tensorflow as tf

    try:
        pixels = decode(tf.constant(data), size[0], size[1], COLOR_MODES[mode][1])
        return pixels.numpy().astype(np.float32)
    except (tf.errors.InvalidArgumentError, ValueError):
        raise ImageError("does not decode as an image: the file is damaged or truncated") from None
