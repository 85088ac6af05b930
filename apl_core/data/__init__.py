"""Where the images come from: STL-10, an embedded synthetic dataset, or a folder of your own.

Every source ends as an `ImageSet` (imageset.py): uint8 images (N, 3, S, S) on the CPU plus
int64 labels. Images stay uint8 until a batch reaches the training device (`BatchLoader`,
loader.py), where it is augmented or normalized as a whole (`apl_core.augment`): no per-image
Python work per step.

- "stl10" (stl10.py): the paper's data, downloaded once, then memory-mapped.
- "synthetic" (synthetic.py): procedurally generated scenes that need no download, the data of
  the smoke, quick and gpu profiles.
- "folder" (folder.py): your own images, as plain files (pretraining) or in the ImageFolder
  layout data_dir/{train,test}/<class>/*.jpg (fine-tuning).

sources.py dispatches `load_split` to them; splits.py chooses which images a run uses
(labelled subsets, validation, test, held-out images).
"""
from __future__ import annotations

from .folder import IMAGE_EXTENSIONS, UNREADABLE_IMAGES, UnreadableImageError, load_folder
from .imageset import SPLITS, ImageSet
from .loader import BatchLoader
from .sources import load_split
from .splits import (
    data_source, finetune_sets, held_out_images, knn_sets, labelled_split, load_labelled_split,
    pretraining_images, split_holdout, stratified_indices,
)
from .stl10 import (
    STL10_FILES, STL10_FOLDER, STL10_SIZE, STL10_URL, CorruptDatasetError, DatasetNotFoundError,
    load_stl10,
)
from .synthetic import SYNTHETIC_CLASSES, SYNTHETIC_SIZES, synthetic_images, synthetic_split

def demo_photo(size: int, photo_dir: str = "", seed: int = 0):
    """One photo, (3, size, size) uint8, to draw the puzzle on: the first image of `photo_dir`
    (upright, shorter side resized, center-cropped) when given, else matplotlib's sample
    portrait of Grace Hopper, center-cropped to a square."""
    if photo_dir:
        return load_split("folder", "unlabeled", photo_dir, size, limit=1, seed=seed).images[0]
    import numpy as np
    import torch
    from matplotlib import cbook
    from PIL import Image

    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    w, h = photo.size
    side = min(w, h)
    photo = photo.crop(((w - side) // 2, 0, (w - side) // 2 + side, side))
    return torch.from_numpy(np.asarray(photo.resize((size, size))).copy()).permute(2, 0, 1)


__all__ = [
    "demo_photo", "SPLITS", "ImageSet", "load_split", "BatchLoader", "labelled_split", "stratified_indices",
    "split_holdout", "pretraining_images", "held_out_images", "knn_sets", "data_source", "load_labelled_split",
    "finetune_sets",
    "load_stl10", "STL10_FILES", "STL10_FOLDER", "STL10_SIZE", "STL10_URL",
    "CorruptDatasetError", "DatasetNotFoundError", "synthetic_split", "synthetic_images",
    "SYNTHETIC_CLASSES", "SYNTHETIC_SIZES", "load_folder", "IMAGE_EXTENSIONS",
    "UNREADABLE_IMAGES", "UnreadableImageError",
]
