"""`load_split`: one split of any dataset, by name."""
from __future__ import annotations

from pathlib import Path

from .folder import load_folder
from .imageset import SPLITS, ImageSet, random_subset, resize_split
from .stl10 import STL10_SIZE, load_stl10
from .synthetic import synthetic_split


def load_split(dataset: str, split: str, data_dir: str = "data", image_size: int = 96,
               limit: int = 0, seed: int = 0, download: bool = True,
               unreadable_images: str = "skip", cache_dir: str | Path | None = None) -> ImageSet:
    """Load one split of a dataset as an `ImageSet`.

    dataset: "stl10" | "synthetic" | "folder" (data_dir is then the folder of images);
    split: "unlabeled" | "train" | "test".
    limit > 0 keeps only that many images, a random subset drawn with `seed` (the original's
    SAMPLE mode pretrains on 8,192 random unlabeled images). For "synthetic", `seed` is the
    seed of the generator and `limit` renders only images 0..limit-1, which are already
    independent random draws.
    image_size: STL-10 is 96 x 96; another size resizes the whole split once (antialiased).
    unreadable_images, cache_dir: for "folder" (see `load_folder`).
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is invalid: choose one of {SPLITS}")
    if limit < 0:
        raise ValueError(f"limit={limit} must be >= 0 (0: the whole split)")
    if image_size < 8:
        raise ValueError(f"image_size={image_size} is too small: use at least 8 pixels")
    if dataset == "synthetic":
        return synthetic_split(split, seed=seed, image_size=image_size, limit=limit)
    if dataset == "stl10":
        data = load_stl10(split, data_dir, download=download)
        data = random_subset(data, limit, seed)
        if image_size != STL10_SIZE:
            data = resize_split(data, image_size, f"STL-10 {split}")
        return data
    if dataset == "folder":
        return load_folder(split, data_dir, image_size=image_size, limit=limit, seed=seed,
                           unreadable_images=unreadable_images, cache_dir=cache_dir)
    raise ValueError(f"dataset={dataset!r} is invalid: choose 'stl10', 'synthetic' or 'folder'")
