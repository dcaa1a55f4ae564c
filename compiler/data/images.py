"""Image files: list them with their labels without decoding, check their headers, decode one in TensorFlow.

An image folder is never decoded up front: `list_folder` / `list_manifest` give
file paths and class indices (a few bytes per image), the split is taken on that
list, and `decode_image` runs inside `tf.data.map` batch by batch, so memory does
not grow with the number of images. Pixels stay uint8 until the model (scaling
is a layer, as for every input).

Every file is checked at listing time, cheaply (its header and its last bytes,
never its pixels), so a bad file is named before training starts instead of
failing an epoch: a broken link, a FIFO or device, a 0-byte file, a file that is
not an image, a truncated JPEG/PNG, or an image with more than MAX_PIXELS pixels
(a decompression bomb: a few kB that decode to gigabytes). With
`data.on_bad_file: skip` such files are left out, counted and listed instead.

`decode_image` is public: `kspec serve` decodes `{"b64": ...}` request images
with it, exactly as training did.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

from ..errors import DataError
from .files import check_regular
from .table import file_error

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF")
ON_BAD_FILE = ("error", "skip")
MAX_PIXELS = 50_000_000            # width x height bound, checked on the header before any decoding
IGNORED_FILES = ("thumbs.db", "desktop.ini")   # what file browsers leave in folders
_HINT = "replace or remove the file, or set `data.on_bad_file: skip` to leave bad files out"


@dataclass(frozen=True)
class ImageListing:
    """The images of a data set: path and class index of each, the class names, what was left out."""

    paths: list[str]
    labels: list[int]
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)    # (path, why)


def problem(path: str) -> str | None:
    """Why `path` cannot be used as an image (checked on its header and tail only), or None."""
    try:
        info = check_regular(path, "image file")
    except DataError as exc:
        return exc.diagnostics[0].message
    if info.st_size == 0:
        return "image file is empty (0 bytes)"
    quick = _quick_check(path, info.st_size)
    if quick is not False:
        return quick
    from PIL import Image, UnidentifiedImageError

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")          # Pillow's own DecompressionBombWarning
                with Image.open(fh) as img:
                    fmt, (width, height) = img.format, img.size
            if fmt not in IMAGE_FORMATS:
                return f"is a {fmt} image; readable formats are {'/'.join(IMAGE_FORMATS)}"
            if width * height > MAX_PIXELS:
                return (f"image is {width} x {height} pixels ({width * height:,}), more than the "
                        f"{MAX_PIXELS:,} kspec decodes (a decompression bomb, or a photo to shrink first)")
            fh.seek(max(0, info.st_size - 64))
            tail = fh.read()
    except Image.DecompressionBombError as exc:
        return f"image has too many pixels to decode safely ({exc})"
    except UnidentifiedImageError:
        return f"cannot read image: not a {'/'.join(IMAGE_FORMATS)} file, or the file is damaged"
    except (OSError, ValueError, SyntaxError) as exc:
        text = str(getattr(exc, "strerror", None) or exc)
        if "truncated" in text.lower():
            return "image file is truncated (it ends inside its header)"
        return f"cannot read image: {text}"
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        return "JPEG file is truncated (no end-of-image marker)"
    if fmt == "PNG" and b"IEND" not in tail:
        return "PNG file is truncated (no IEND chunk)"
    return None


def _quick_check(path: str, size: int):
    """The common cases without Pillow (170 us a file): a PNG's IHDR or a baseline/progressive JPEG's
    SOF marker within its first 64 kB, and its end marker. None: fine; a text: the problem; False:
    not decided here (Pillow decides)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            head = fh.read(65536)
            fh.seek(max(0, size - 64))
            tail = fh.read()
    except OSError:
        return False
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        end = b"IEND" in tail
    elif head[:3] == b"\xff\xd8\xff":
        dims, i = None, 2
        while i + 9 < len(head) and head[i] == 0xFF:
            marker, length = head[i + 1], int.from_bytes(head[i + 2:i + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2):
                dims = int.from_bytes(head[i + 7:i + 9], "big"), int.from_bytes(head[i + 5:i + 7], "big")
                break
            if length < 2:
                return False
            i += 2 + length
        if dims is None:
            return False
        (width, height), end = dims, b"\xff\xd9" in tail
    else:
        return False
    if width == 0 or height == 0:
        return False
    if width * height > MAX_PIXELS:
        return (f"image is {width} x {height} pixels ({width * height:,}), more than the "
                f"{MAX_PIXELS:,} kspec decodes (a decompression bomb, or a photo to shrink first)")
    if not end:
        return ("PNG file is truncated (no IEND chunk)" if head[:4] == b"\x89PNG"
                else "JPEG file is truncated (no end-of-image marker)")
    return None


def _is_candidate(name: str) -> bool:
    return not name.startswith(".") and name.lower() not in IGNORED_FILES


def list_folder(root: str, on_bad_file: str = "error") -> ImageListing:
    """One sub-folder per class (sorted names = class indices); every file in it must be an image."""
    if not os.path.isdir(root):
        raise file_error(root or "<none>", "image folder not found (expected one sub-folder per class)")
    classes = sorted(d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise file_error(root, "has no sub-folders; put the images of each class in a folder named after it")
    paths: list[str] = []
    labels: list[int] = []
    skipped: list[tuple[str, str]] = []
    for k, cls in enumerate(classes):
        folder = os.path.join(root, cls)
        found = 0
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if not _is_candidate(name) or (os.path.isdir(path) and not os.path.islink(path)):
                continue
            why: str | None
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                why = f"is not an image file (extensions read: {', '.join(IMAGE_EXTENSIONS)})"
            else:
                why = problem(path)
            if why is not None:
                if on_bad_file != "skip":
                    raise file_error(path, why, hint=_HINT)
                skipped.append((path, why))
                continue
            paths.append(path)
            labels.append(k)
            found += 1
        if not found:
            raise file_error(folder, f"class folder {cls!r} has no usable images"
                             + (f" ({sum(1 for s in skipped if os.path.dirname(s[0]) == folder)} skipped)"
                                if skipped else ""),
                             hint="add images of this class, or remove the folder (each sub-folder is a class)")
    return ImageListing(paths, labels, classes, skipped)


def list_manifest(path: str, target: str, on_bad_file: str = "error", delimiter: str = ","):
    """A CSV of `path` (relative to the CSV's folder) and label columns: (listing, raw labels, line of each)."""
    from .csvfile import read_csv

    f = read_csv(path, delimiter)
    j, k = f.index("path", "path column"), f.index(target, "label column")
    base = os.path.dirname(os.path.abspath(path))
    paths, raw, lines, skipped = [], [], [], []
    for row, line in zip(f.rows, f.lines):
        image = os.path.normpath(os.path.join(base, row[j]))
        why = problem(image)
        if why is not None:
            if on_bad_file != "skip":
                raise file_error(path, f"line {line}: {image}: {why}", line=line, col=1, hint=_HINT)
            skipped.append((image, why))
            continue
        paths.append(image)
        raw.append(row[k])
        lines.append(line)
    if not paths:
        raise file_error(path, "lists no usable images")
    return ImageListing(paths, [], [], skipped), raw, lines


def decode_image(data, height: int, width: int, channels: int):
    """One encoded image (a scalar string tensor: JPEG, PNG, BMP or GIF bytes) -> uint8 (height, width, channels).

    Grayscale, grayscale+alpha, RGB, RGBA (and CMYK JPEG, which TensorFlow turns into
    RGB) are converted to `channels` (1, 3 or 4); the image is resized bilinearly when
    its size differs, then rounded back to uint8.
    """
    import tensorflow as tf

    img = tf.io.decode_image(data, channels=0, expand_animations=False, dtype=tf.uint8)
    have = tf.shape(img)[-1]
    gray = img[..., :1]
    rgb = tf.cond(have >= 3, lambda: img[..., :3], lambda: tf.image.grayscale_to_rgb(gray))
    if channels == 3:
        out = rgb
    elif channels == 1:
        out = tf.cond(have >= 3, lambda: tf.image.rgb_to_grayscale(img[..., :3]), lambda: gray)
    else:
        opaque = tf.fill(tf.shape(gray), tf.constant(255, tf.uint8))
        alpha = tf.cond(tf.equal(have % 2, 0), lambda: img[..., -1:], lambda: opaque)
        out = tf.concat([rgb, alpha], axis=-1)
    size = tf.shape(out)[:2]
    out = tf.cond(tf.reduce_all(tf.equal(size, [height, width])),
                  lambda: out,
                  lambda: tf.saturate_cast(tf.round(tf.image.resize(out, (height, width))), tf.uint8))
    return tf.ensure_shape(out, (height, width, channels))


@dataclass(frozen=True)
class ImageReader:
    """How a streamed split turns a file path into the model input's tensor."""

    size: tuple[int, int]
    channels: int

    def element(self, path):
        import tensorflow as tf

        return decode_image(tf.io.read_file(path), self.size[0], self.size[1], self.channels)

    def bytes_per_example(self) -> int:
        return self.size[0] * self.size[1] * self.channels

    def read(self, path: str):
        """One file decoded eagerly (numpy uint8), for a sample or to find a file that fails in tf.data."""
        import tensorflow as tf

        return self.element(tf.constant(path)).numpy()
