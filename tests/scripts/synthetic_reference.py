"""Regenerate tests/data/synthetic_reference.png, the committed sample of the embedded synthetic
dataset that tests/test_data.py checks the generator against.

Only run this when the dataset is meant to change: every committed result (apl_core/results/,
the README's numbers) was measured on the old images, so rerun the seeds afterwards.

    PYTHONPATH=. python tests/scripts/synthetic_reference.py
"""
from pathlib import Path

import torch
from PIL import Image

from apl_core.data.synthetic import synthetic_images

REFERENCE = Path(__file__).parents[1] / "data" / "synthetic_reference.png"
SEED, IMAGE_SIZE = 0, 32
# train 0-9 are one image of each class (labels are index % 10); unlabeled and test show that
# every split draws its own scenes
IMAGES = {"train": range(10), "unlabeled": range(2), "test": range(2)}


def reference_images() -> torch.Tensor:
    """(14, 3, S, S) uint8, in the order of IMAGES."""
    return torch.cat([synthetic_images(SEED, split, torch.tensor(list(index)), IMAGE_SIZE)
                      for split, index in IMAGES.items()])


def to_strip(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) -> (S, N * S, 3): the images side by side, as an RGB picture."""
    return images.permute(2, 0, 3, 1).flatten(1, 2)


def from_strip(strip: torch.Tensor) -> torch.Tensor:
    size = strip.shape[0]
    return strip.unflatten(1, (-1, size)).permute(1, 3, 0, 2)


if __name__ == "__main__":
    REFERENCE.parent.mkdir(exist_ok=True)
    Image.fromarray(to_strip(reference_images()).numpy()).save(REFERENCE, optimize=True)
    print(f"wrote {REFERENCE}")
