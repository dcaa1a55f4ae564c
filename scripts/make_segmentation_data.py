"""Write the segmentation example's data (examples/segmentation_shapes.yaml): small images of circles
and squares on noise, each with its mask of class indices (0 background, 1 circle, 2 square).

Everything is drawn from the seed with numpy and saved with Pillow, so a run remakes the files
exactly; tests call `write_shapes` to draw a data set of their own into a temporary folder:

    python scripts/make_segmentation_data.py            writes examples/data/shapes/{images,masks}/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "examples" / "data" / "shapes"
BACKGROUND, CIRCLE, SQUARE = 0, 1, 2


def draw(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (size, size, 3) uint8 image and its (size, size) uint8 mask: 1-3 shapes on noise."""
    image = rng.normal(110, 35, (size, size, 3))
    mask = np.zeros((size, size), dtype=np.uint8)
    rows, cols = np.mgrid[:size, :size]
    for _ in range(rng.integers(1, 4)):
        kind = rng.choice([CIRCLE, SQUARE])
        radius = rng.integers(size // 8, size // 4 + 1)
        r, c = rng.integers(radius, size - radius, 2)
        if kind == CIRCLE:
            inside = (rows - r) ** 2 + (cols - c) ** 2 <= radius ** 2
        else:
            inside = (np.abs(rows - r) <= radius) & (np.abs(cols - c) <= radius)
        image[inside] = rng.normal(rng.uniform(170, 240, 3), 20, (int(inside.sum()), 3))
        mask[inside] = kind
    # Noise in steps of 32 grey levels: as hard to see through, and PNG keeps it 4x smaller.
    return (np.clip(image, 0, 255) // 32 * 32).astype(np.uint8), mask


def write_shapes(out: Path, n: int = 200, size: int = 32, seed: int = 0) -> Path:
    """`n` pairs under out/images/NNN.png and out/masks/NNN.png (grayscale, class indices)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, mask = draw(rng, size)
        Image.fromarray(image).save(out / "images" / f"{i:03d}.png")
        Image.fromarray(mask, mode="L").save(out / "masks" / f"{i:03d}.png")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", type=Path, default=OUT)
    p.add_argument("-n", type=int, default=200)
    args = p.parse_args()
    write_shapes(args.output, args.n)
    print(f"wrote {args.n} image/mask pairs to {args.output}")


if __name__ == "__main__":
    main()
