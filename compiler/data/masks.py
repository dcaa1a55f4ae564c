"""Segmentation pairs: `{images: DIR, masks: DIR}`, an image and its mask of class indices per pixel.

Each image (a file directly in DIR, or in a sub-folder of it) is paired with the mask of the
same relative path and stem under the masks folder, whatever the extensions (`cat/a.jpg` <->
`cat/a.png`). A mask is an 8-bit grayscale (mode L) lossless image whose pixel values are
class indices. Pairs are listed, not decoded (as image folders are): every file's header is
checked at listing time (the image checks of images.py, a mask's format and mode, and the
mask's size against its image's, before any resizing, since a resize would hide a mismatch).
In tf.data the image is decoded and resized like any image; the mask is resized with NEAREST
interpolation (a class index must stay a class index) and yielded as uint8 (height, width),
what `sparse_categorical_crossentropy` takes for a per-pixel softmax of shape (H, W, C).

A mask value at or above the output's units is found when read: `PairReader.classes` is set
once the model is built (`bound_masks`), the pipeline asserts it, and `Stream.find_bad_file`
(after a failed epoch) and `Stream.sample` name the mask and the value.

Geometric augmentation (GEOMETRIC_AUGMENT) would have to move the mask with the image; it is
refused for now. Photometric augmentation changes the image only, as it should.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError, Diagnostic, Loc
from ..spec.types import DataSpec
from .images import IGNORED_FILES, IMAGE_EXTENSIONS, ImageReader, problem
from .table import source_error

MASK_FORMATS = ("PNG", "BMP")              # lossless: a JPEG would blur class indices into other classes
MASK_MODE = "L"
GEOMETRIC_AUGMENT = ("RandomFlip", "RandomRotation", "RandomTranslation", "RandomZoom", "RandomCrop")
_HINT = "fix or remove the pair, or set `data.on_bad_file: skip` to leave bad pairs out"


@dataclass(frozen=True)
class PairListing:
    images: list[str]
    masks: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)    # (path, why)


def _files(root: str) -> dict[str, list[str]]:
    """Relative path without extension -> the image files of that name under `root` (sorted walk)."""
    found: dict[str, list[str]] = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or name.lower() in IGNORED_FILES or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(folder, name)
            key = os.path.splitext(os.path.relpath(path, root))[0]
            found.setdefault(key, []).append(path)
    return found


def _header(path: str) -> tuple[str, tuple[int, int], str]:
    """(format, (width, height), mode) from the file's header (Pillow reads no pixels here)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as img:
            return str(img.format), img.size, img.mode


def list_pairs(data: DataSpec, images_root: str, masks_root: str, on_bad_file: str = "error") -> PairListing:
    """The (image, mask) pairs, matched by relative path and stem; errors at data.source name the files."""
    for root, what in ((images_root, "images"), (masks_root, "masks")):
        if not os.path.isdir(root):
            raise source_error(data, f"{what} folder {root or '<none>'} not found")
    images, masks = _files(images_root), _files(masks_root)
    if not images:
        raise source_error(data, f"images folder {images_root} has no images ({', '.join(IMAGE_EXTENSIONS)})")
    if not masks:
        raise source_error(data, f"masks folder {masks_root} has no masks ({', '.join(IMAGE_EXTENSIONS)})")
    pairs, skipped = [], []

    def bad(path: str, why: str, partner: str | None = None) -> None:
        if on_bad_file != "skip":
            raise source_error(data, f"{path}: {why}", hint=_HINT)
        skipped.append((path, why))
        if partner is not None:
            skipped.append((partner, f"left out with {path}, its pair"))

    for key, found in sorted(masks.items()):
        if key not in images:
            bad(found[0], f"mask has no image: expected an image {os.path.join(images_root, key)}.* "
                          f"({'/'.join(IMAGE_EXTENSIONS)})")
    for key, found in sorted(images.items()):
        mask = masks.get(key)
        if len(found) > 1 or (mask is not None and len(mask) > 1):
            twins = found if len(found) > 1 or mask is None else mask
            raise source_error(data, f"{twins[0]} and {twins[1]} have the same name: which one is meant is "
                                     "ambiguous", hint="rename or remove one of them")
        image = found[0]
        if mask is None:
            bad(image, f"image has no mask: expected a mask {os.path.join(masks_root, key)}.* "
                       f"({'/'.join(IMAGE_EXTENSIONS)})")
            continue
        why = _pair_problem(image, mask[0])
        if why is not None:
            bad(why[0], why[1], partner=mask[0] if why[0] == image else image)
            continue
        pairs.append((image, mask[0]))
    if not pairs:
        raise source_error(data, f"no usable image/mask pairs in {images_root} and {masks_root}"
                           + (f" ({len(skipped)} files skipped)" if skipped else ""))
    return PairListing([p[0] for p in pairs], [p[1] for p in pairs], skipped)


def _pair_problem(image: str, mask: str) -> tuple[str, str] | None:
    """(file, why) for the first problem of a pair, or None."""
    for path in (image, mask):
        why = problem(path)
        if why is not None:
            return path, why
    try:
        _, image_size, _ = _header(image)
        fmt, mask_size, mode = _header(mask)
    except (OSError, ValueError, SyntaxError) as exc:
        return mask, f"cannot read image header: {exc}"
    if fmt not in MASK_FORMATS:
        return mask, (f"mask is a {fmt} file; masks must be lossless ({'/'.join(MASK_FORMATS)}), since a lossy "
                      "format changes class indices at the edges")
    if mode != MASK_MODE:
        channels = {"LA": 2, "RGB": 3, "RGBA": 4, "P": 1}.get(mode)
        what = ("a palette image (its pixels are color numbers, read as colors)" if mode == "P"
                else f"has {channels} channels ({mode})" if channels else f"has mode {mode}")
        return mask, (f"mask {what}; a mask must be one 8-bit grayscale channel (mode L) of class indices "
                      "0, 1, 2, ...")
    if mask_size != image_size:
        return mask, (f"mask is {mask_size[0]} x {mask_size[1]} pixels but its image {image} is "
                      f"{image_size[0]} x {image_size[1]}: a mask must cover its image pixel for pixel")
    return None


def geometric_augmentation(data: DataSpec) -> None:
    """Refuse augmentation that moves pixels: the masks would no longer match their images."""
    for i, step in enumerate(data.augment):
        if step.name in GEOMETRIC_AUGMENT:
            raise DataError(Diagnostic(
                f"{step.name} moves pixels, but kspec applies augmentation to the image only, so each mask "
                "would no longer match its image: geometric augmentation is not supported for segmentation yet",
                step.loc or data.loc, f"data.augment[{i}]",
                hint="remove it (photometric augmentation, e.g. RandomContrast or RandomBrightness, is fine), "
                     "or flip/rotate the pairs on disk"))


def decode_mask(data, height: int, width: int):
    """An encoded grayscale mask -> uint8 (height, width) class indices, resized with NEAREST."""
    import tensorflow as tf

    mask = tf.io.decode_image(data, channels=1, expand_animations=False, dtype=tf.uint8)
    mask = tf.cond(tf.reduce_all(tf.equal(tf.shape(mask)[:2], [height, width])), lambda: mask,
                   lambda: tf.cast(tf.image.resize(mask, (height, width), method="nearest"), tf.uint8))
    return tf.ensure_shape(mask[..., 0], (height, width))


@dataclass(frozen=True)
class PairReader:
    """How a streamed segmentation split turns (image path, mask path) into (image, mask) tensors."""

    image: ImageReader
    classes: int | None = None       # the output's units once the model is built: masks must stay below
    paired = True

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    @property
    def channels(self) -> int:
        return self.image.channels

    def element(self, path):
        return self.image.element(path)

    def mask(self, path):
        import tensorflow as tf

        return decode_mask(tf.io.read_file(path), *self.size)

    def bounded(self, mask):
        """`mask`, asserted below `classes` (after any cache: a cache made for another model is checked too)."""
        import tensorflow as tf

        if self.classes is None or self.classes > 255:        # every uint8 value is a class
            return mask
        with tf.control_dependencies([tf.debugging.assert_less(tf.reduce_max(mask), tf.constant(self.classes, tf.uint8),
                                                               message="mask value >= the output's units")]):
            return tf.identity(mask)

    def bytes_per_example(self) -> int:
        return self.image.bytes_per_example() + self.size[0] * self.size[1]

    def read(self, path: str):
        return self.image.read(path)

    def read_mask(self, path: str) -> np.ndarray:
        """One mask decoded eagerly, its values checked against `classes`."""
        import tensorflow as tf

        mask = decode_mask(tf.io.read_file(tf.constant(path)), *self.size).numpy()
        top = int(mask.max()) if mask.size else 0
        if self.classes is not None and top >= self.classes:
            row, col = (int(v) for v in np.argwhere(mask == top)[0])
            raise DataError(Diagnostic(
                f"mask holds the class index {top} (first at row {row}, column {col} after resizing), but the "
                f"model's output has {self.classes} units (classes 0..{self.classes - 1})", Loc(path),
                hint=f"give the output {top + 1} units, or fix the mask"))
        return mask


def mask_sizes_fit(output_shape: tuple, reader: PairReader, output: str) -> None:
    """A per-pixel output must have the masks' height and width."""
    if len(output_shape) != 3 or any(o is not None and o != s for o, s in zip(output_shape[:2], reader.size)):
        shown = "(" + ", ".join("None" if d is None else str(d) for d in output_shape) + ")"
        raise DataError(Diagnostic(
            f"output {output!r} has shape {shown} per example, but the masks are read as {reader.size[0]} x "
            f"{reader.size[1]} pixels: a segmentation output is (height, width, classes) at the masks' size",
            path=f"model.outputs.{output}",
            hint="end the model with a 1x1 Conv2D (padding: same) with one filter per class and a softmax"))
