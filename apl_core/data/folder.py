"""A folder of your own images: plain files for pretraining, the ImageFolder layout for
fine-tuning. Unreadable files are skipped with one warning, photos stand upright (EXIF), and a
decoded split can be cached so that it is decoded once."""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import write_atomic
from ..config import UNREADABLE_IMAGES
from .imageset import ImageSet, random_index

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class UnreadableImageError(ValueError):
    """An image file of a folder dataset could not be decoded (unreadable_images='error')."""


def load_folder(split: str, data_dir: str, image_size: int = 96, limit: int = 0,
                seed: int = 0, unreadable_images: str = "skip",
                cache_dir: str | Path | None = None) -> ImageSet:
    """Your own images, upright (EXIF orientation applied), resized (shorter side, then a
    center crop) to image_size.

    "unlabeled": every image file under data_dir, recursively. "train" / "test": the
    torchvision ImageFolder layout data_dir/<split>/<class>/<image>; the classes are the
    sub-folders of data_dir/train, so train and test labels agree.
    unreadable_images: 'skip' leaves out files that cannot be decoded, with one warning that
    counts them and names the first few; 'error' stops at the first one.
    cache_dir: the decoded split is saved there, keyed by the files' names, sizes and times
    and the settings, so loading it again does not decode again.
    """
    if unreadable_images not in UNREADABLE_IMAGES:
        raise ValueError(f"unreadable_images={unreadable_images!r} is invalid: choose one of "
                         f"{UNREADABLE_IMAGES}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist: set data_dir / --data-dir "
                                f"to the folder that holds your images")
    if split == "unlabeled":
        files, labels, classes = _image_files(root), None, []
    else:
        split_dir = root / split
        class_root = root / "train" if (root / "train").is_dir() else split_dir
        if not split_dir.is_dir():
            raise FileNotFoundError(
                f"{split_dir} does not exist: for labelled splits arrange the images as "
                f"{root}/train/<class>/* and {root}/test/<class>/* (torchvision ImageFolder)"
            )
        classes = sorted(p.name for p in class_root.iterdir() if p.is_dir())
        unknown = sorted(
            p.name for p in split_dir.iterdir() if p.is_dir() and p.name not in classes
        )
        if unknown:
            raise ValueError(f"{split_dir} has classes {unknown} that {class_root} does not have")
        files, label_list = [], []
        for label, name in enumerate(classes):
            class_files = _image_files(split_dir / name) if (split_dir / name).is_dir() else []
            files += class_files
            label_list += [label] * len(class_files)
        labels = torch.tensor(label_list, dtype=torch.long)
    if not files:
        where = root if split == "unlabeled" else root / split / "<class>"
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {where}")
    keep = random_index(len(files), limit, seed)  # drawn before decoding: only these are read
    if keep is not None:
        files = [files[i] for i in keep]
        labels = None if labels is None else labels[keep]
    cache = None
    if cache_dir is not None:
        key = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        digest = hashlib.blake2b(json.dumps([key, image_size, unreadable_images]).encode(),
                                 digest_size=8).hexdigest()
        cache = Path(cache_dir) / f"folder-{split}-{image_size}px-{digest}.pt"
        if cache.is_file():
            saved = torch.load(cache, weights_only=True)
            return ImageSet(saved["images"], saved["labels"], saved["classes"])
    images, good, bad = [], [], []
    for i, path in enumerate(tqdm(files, desc=f"decoding {root.name}/{split}", unit="image",
                                  disable=len(files) < 200)):
        try:
            images.append(_load_image(path, image_size))
            good.append(i)
        except (OSError, SyntaxError, ValueError) as error:  # what PIL raises on bad files
            if unreadable_images == "error":
                raise UnreadableImageError(
                    f"{path} is not a readable image ({error}); remove or repair it, or set "
                    f"unreadable_images='skip' to leave such files out") from error
            bad.append(path)
    if bad:
        named = ", ".join(str(p) for p in bad[:3]) + (", ..." if len(bad) > 3 else "")
        warnings.warn(f"{root}: skipped {len(bad)} unreadable image file(s) of {len(files)}: "
                      f"{named} (unreadable_images='error' stops instead)", stacklevel=3)
    if not images:
        raise FileNotFoundError(f"none of the {len(files)} image files in {root} could be read")
    data = ImageSet(torch.stack(images), None if labels is None else labels[good], classes)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        saved = {"images": data.images, "labels": data.labels, "classes": classes}
        write_atomic(cache, lambda file: torch.save(saved, file))
    return data


def _image_files(folder: Path) -> list[Path]:
    files = (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    return sorted(p for p in files if p.is_file())


def _load_image(path: Path, image_size: int) -> torch.Tensor:
    """One image as uint8 (3, S, S): upright, shorter side resized to S, center-cropped."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        size = (image_size, image_size)
        image = ImageOps.exif_transpose(image)  # a phone's portrait photo stands upright
        image = ImageOps.fit(image.convert("RGB"), size, Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
