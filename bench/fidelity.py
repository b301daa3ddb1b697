"""Fidelity of reduced-precision configurations against float32, on the real MobileNetV2
weights and real photos (the skimage photos and their mirror images): the minimum cosine
similarity between the two embeddings of each photo, and whether each photo keeps its
nearest neighbour among the others. A configuration under 0.995 is not recommended.

    python -m bench.fidelity --dtypes bfloat16 --compile
    python -m bench.fidelity --dtypes float16,bfloat16 --device cuda
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RECOMMENDED_MIN_COSINE = 0.995
PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "horse",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
)  # fmt: skip


@dataclass
class Fidelity:
    min_cosine: float
    neighbours_kept: int
    photos: int

    @property
    def recommended(self) -> bool:
        return self.min_cosine >= RECOMMENDED_MIN_COSINE and self.neighbours_kept == self.photos


def photos():
    """Each photo and its mirror image: a photo's nearest neighbour is then usually its
    mirror, a neighbour a reduced precision should not lose."""
    import skimage.data
    from PIL import Image, ImageOps

    images = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]
    return images + [ImageOps.mirror(image) for image in images]


def compare(reference: np.ndarray, candidate: np.ndarray) -> Fidelity:
    """Rows are L2-normalised embeddings of the same photos, in the same order."""
    cosine = (reference * candidate).sum(axis=1)

    def nearest(embeddings):
        similarity = embeddings @ embeddings.T
        np.fill_diagonal(similarity, -np.inf)
        return similarity.argmax(axis=1)

    kept = int((nearest(reference) == nearest(candidate)).sum())
    return Fidelity(float(cosine.min()), kept, len(reference))


def embed_all(settings_fields: dict, images) -> np.ndarray:
    from app.embedding.embedder import Embedder
    from app.embedding.pooling import PoolingStrategy
    from app.settings import Settings

    embedder = Embedder.from_settings(Settings(**settings_fields))
    embedder.adopt_thread()
    return embedder.embed(images, PoolingStrategy.MEAN, normalize=True)[0]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtypes", default="bfloat16", help="float16 needs --device cuda")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also compiled, for each dtype")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "image-embed")
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    from app.embedding.default_model import ensure_default_model

    folder = ensure_default_model(args.cache)
    base = dict(model_id=str(folder), model_dir="/nonexistent", device=args.device, max_batch_size=8)
    images = photos()
    reference = embed_all(dict(base, dtype="float32"), images)
    rows = []
    for dtype in args.dtypes.split(","):
        for compiled in (False, True) if args.compile else (False,):
            result = compare(reference, embed_all(dict(base, dtype=dtype, compile=compiled), images))
            rows.append(
                {"dtype": dtype, "compile": compiled, **vars(result), "recommended": result.recommended}
            )
    print("| dtype | compiled | min cosine vs float32 | nearest neighbour kept | recommended |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['dtype']} | {'yes' if row['compile'] else 'no'} | {row['min_cosine']:.5f} "
            f"| {row['neighbours_kept']}/{row['photos']} | {'yes' if row['recommended'] else 'no'} |"
        )
    return rows


if __name__ == "__main__":
    main()
