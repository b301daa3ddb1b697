"""Real photos for fidelity checks, and a calibration folder that holds none of them.

Evaluation: 16 of skimage's photos and their mirror images (a photo's nearest neighbour is
then usually its mirror, a neighbour a reduced precision should not lose). Calibration: the
other photos skimage ships (a stereo pair of a motorcycle, 40 faces), cropped, scaled and
turned grey at random, as a user's own folder of pictures would vary. (Its drawings and
charts are left out: a chessboard or a logo in calibration widens the int8 ranges, and
the held-out photos' min cosine fell to 0.985 even with 27 of 63 layers in float.)"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
_CALIBRATION_SOURCES = ("motorcycle_left.png", "motorcycle_right.png")


def evaluation_photos():
    import skimage.data
    from PIL import Image, ImageOps

    images = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]
    return images + [ImageOps.mirror(image) for image in images]


def write_calibration_dir(folder: Path, count: int = 96, seed: int = 0) -> Path:
    """`count` PNGs made from pictures that are not among the evaluation photos."""
    import skimage
    from PIL import Image, ImageOps

    data = Path(skimage.__file__).parent / "data"
    photos = [Image.open(data / name).convert("RGB") for name in _CALIBRATION_SOURCES]
    faces = [
        Image.fromarray((face * 255).astype(np.uint8)).convert("RGB").resize((200, 200))
        for face in np.load(data / "lfw_subset.npy")
    ]
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        # Half crops of the two motorcycle photos, half faces.
        image = photos[index % 4 // 2] if index % 2 == 0 else faces[index // 2 % len(faces)]
        width, height = image.size
        scale = rng.uniform(0.3, 1.0)
        w, h = max(8, int(width * scale)), max(8, int(height * scale))
        x, y = rng.randint(0, width - w), rng.randint(0, height - h)
        crop = image.crop((x, y, x + w, y + h))
        if rng.random() < 0.2:
            crop = ImageOps.grayscale(crop).convert("RGB")
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        crop.save(folder / f"calibration-{index:03d}.png")
    return folder
