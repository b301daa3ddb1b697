"""How close a reduced-precision or converted model's embeddings are to float32's: the
minimum and mean cosine between the two embeddings of each image, and how many images keep
their nearest neighbour among the others (what a search over the embeddings would see)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Fidelity:
    min_cosine: float
    mean_cosine: float
    neighbours_kept: int
    images: int

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"min cosine {self.min_cosine:.5f}, mean cosine {self.mean_cosine:.5f}, nearest "
            f"neighbour kept for {self.neighbours_kept}/{self.images} images"
        )


def l2_normalised(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def compare(reference: np.ndarray, candidate: np.ndarray) -> Fidelity:
    """Rows: embeddings of the same images in the same order (normalised here)."""
    reference, candidate = l2_normalised(reference), l2_normalised(candidate)
    cosine = (reference * candidate).sum(axis=1)
    kept = int((nearest_neighbours(reference) == nearest_neighbours(candidate)).sum())
    return Fidelity(float(cosine.min()), float(cosine.mean()), kept, len(reference))


def nearest_neighbours(embeddings: np.ndarray) -> np.ndarray:
    similarity = embeddings @ embeddings.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(axis=1)
