"""Where the images come from: STL-10, an embedded synthetic dataset, or a folder of your own.

Every source ends as an `ImageSet`: uint8 images (N, 3, S, S) on the CPU plus int64 labels.
Images stay uint8 until a batch reaches the training device (`BatchLoader`), where it is
augmented or normalized as a whole (`apl_core.augment`): no per-image Python work per step.

- "stl10": the paper's data. Downloaded once with torchvision's download utilities, then the
  binary files are memory-mapped (100,000 unlabeled images are 2.8 GB; nothing is decoded).
- "synthetic": procedurally generated scenes that need no download (see `synthetic_images`),
  the default of the quick profile.
- "folder": your own images, as plain files (pretraining) or in the ImageFolder layout
  data_dir/{train,test}/<class>/*.jpg (fine-tuning).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import urllib.error
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .augment import AugmentSpec, augment, normalize

SPLITS = ("unlabeled", "train", "test")


@dataclass
class ImageSet:
    """A split in memory: uint8 images (N, 3, S, S) on the CPU (possibly a memory-mapped
    view), int64 labels in 0..C-1 (None for unlabeled splits) and the class names."""

    images: torch.Tensor
    labels: torch.Tensor | None
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 (N, 3, S, S), "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: torch.Tensor) -> ImageSet:
        """The images at `index` (a copy, so a memory-mapped split is read once)."""
        index = torch.as_tensor(index, dtype=torch.long)
        labels = None if self.labels is None else self.labels[index]
        return ImageSet(self.images[index], labels, list(self.classes))


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
        data = _random_subset(data, limit, seed)
        if image_size != STL10_SIZE:
            data = _resize_split(data, image_size, f"STL-10 {split}")
        return data
    if dataset == "folder":
        return load_folder(split, data_dir, image_size=image_size, limit=limit, seed=seed,
                           unreadable_images=unreadable_images, cache_dir=cache_dir)
    raise ValueError(f"dataset={dataset!r} is invalid: choose 'stl10', 'synthetic' or 'folder'")


def _random_subset(data: ImageSet, limit: int, seed: int) -> ImageSet:
    if limit <= 0 or limit >= len(data):
        return data
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(data), generator=generator)[:limit].sort().values
    return data.subset(index)  # sorted: a memory-mapped file is read front to back


def _resize_split(data: ImageSet, image_size: int, name: str, chunk: int = 1024) -> ImageSet:
    """Resize every image once (bilinear, antialiased), in chunks to bound the memory."""
    warnings.warn(
        f"{name}: resizing {len(data)} images from {data.images.shape[-1]} to {image_size} "
        f"pixels once at load time (antialiased bilinear)",
        stacklevel=3,
    )
    resized = torch.empty(len(data), 3, image_size, image_size, dtype=torch.uint8)
    for start in range(0, len(data), chunk):
        batch = data.images[start : start + chunk].float()
        batch = F.interpolate(batch, size=(image_size, image_size), mode="bilinear",
                              antialias=True, align_corners=False)
        resized[start : start + chunk] = batch.round_().clamp_(0, 255).to(torch.uint8)
    return ImageSet(resized, data.labels, data.classes)


# ---------------------------------------------------------------------------------------
# STL-10

STL10_URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
STL10_ARCHIVE = "stl10_binary.tar.gz"
STL10_ARCHIVE_MD5 = "91f7769df0f17e558f3565bffb0c7dfb"
STL10_FOLDER = "stl10_binary"
STL10_SIZE = 96
# md5 of the extracted files, as torchvision.datasets.STL10 lists them
STL10_FILE_MD5 = {
    "train_X.bin": "918c2871b30a85fa023e0c44e0bee87f",
    "train_y.bin": "5a34089d4802c674881badbb80307741",
    "unlabeled_X.bin": "5242ba1fed5e4be9e1e742405eb56ca4",
    "test_X.bin": "7f263ba9f9e0b06b93213547f721ac82",
    "test_y.bin": "36f9794fa4beb8a2c72628de14fa638e",
}
STL10_FILES = {  # split -> (images file, labels file)
    "unlabeled": ("unlabeled_X.bin", None),
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
}
STL10_CLASS_FILE = "class_names.txt"
VERIFIED_MARKER = ".apl_verified.json"


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not there and could not be downloaded."""


class CorruptDatasetError(RuntimeError):
    """A dataset file is truncated or does not match its checksum."""


def stl10_url() -> str:
    """The archive's URL: STL10_URL unless the environment variable APL_STL10_URL is set
    (a mirror, or a local server in the tests)."""
    return os.environ.get("APL_STL10_URL", STL10_URL)


def load_stl10(split: str, data_dir: str = "data", download: bool = True) -> ImageSet:
    """STL-10 split as a memory-mapped uint8 view (N, 3, 96, 96) plus labels 0..9.

    The files are looked for in data_dir/stl10_binary/ (or data_dir itself when it already
    is that folder), downloaded and extracted there when missing, and checked against their
    md5 once (remembered in a small marker file, so 2.6 GB are not re-hashed every load).
    """
    folder = _stl10_folder(Path(data_dir).expanduser(), split, download)
    images_file, labels_file = STL10_FILES[split]
    _check_stl10_image_file(folder / images_file)
    _verify_stl10_files(folder, [images_file] + ([labels_file] if labels_file else []))
    images = _read_stl10_images(folder / images_file)
    labels = None
    if labels_file is not None:
        labels = _read_stl10_labels(folder / labels_file)
        if len(labels) != len(images):
            raise CorruptDatasetError(
                f"{folder / labels_file} holds {len(labels)} labels for {len(images)} images in "
                f"{folder / images_file}: the files do not belong together; delete {folder} "
                f"and download STL-10 again"
            )
    classes = (folder / STL10_CLASS_FILE).read_text().split() if labels is not None else []
    return ImageSet(images, labels, classes)


def _stl10_folder(data_dir: Path, split: str, download: bool) -> Path:
    needed = [name for name in STL10_FILES[split] if name] + [STL10_CLASS_FILE]
    for folder in (data_dir / STL10_FOLDER, data_dir):
        if all((folder / name).is_file() for name in needed):
            return folder
    folder = data_dir / STL10_FOLDER
    url = stl10_url()
    how_to_fix = (
        f"Download {url} (2.6 GB, md5 {STL10_ARCHIVE_MD5}) and extract it into {data_dir}, "
        f"or point the project at an existing copy with data_dir / --data-dir (the folder "
        f"that holds {STL10_FOLDER}/), or use dataset='synthetic', which needs no download."
    )
    if not download:
        raise DatasetNotFoundError(f"STL-10 files {needed} not found in {folder}. {how_to_fix}")
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(
            url, str(data_dir), filename=STL10_ARCHIVE, md5=STL10_ARCHIVE_MD5
        )
    except RuntimeError as error:  # torchvision's "File not found or corrupted.": md5 mismatch
        raise CorruptDatasetError(
            f"the downloaded archive {data_dir / STL10_ARCHIVE} does not match md5 "
            f"{STL10_ARCHIVE_MD5} (an interrupted or altered download). Delete it and try again. "
            f"{how_to_fix}"
        ) from error
    except (urllib.error.URLError, OSError) as error:
        raise DatasetNotFoundError(
            f"STL-10 files {needed} not found in {folder}, and downloading {url} failed "
            f"({error}). {how_to_fix}"
        ) from error
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise CorruptDatasetError(
            f"the archive from {url} did not contain {missing} under {STL10_FOLDER}/; "
            f"delete {data_dir / STL10_ARCHIVE} and download it again"
        )
    return folder


def _verify_stl10_files(folder: Path, names: list[str]) -> None:
    """Check the md5 of each file once; a marker records (size, mtime) of files that passed."""
    marker = folder / VERIFIED_MARKER
    try:
        verified = json.loads(marker.read_text())
    except (OSError, ValueError):
        verified = {}
    changed = False
    for name in names:
        path = folder / name
        stat = path.stat()
        expected = STL10_FILE_MD5[name]
        record = {"md5": expected, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if verified.get(name) == record:
            continue
        actual = _md5(path)
        if actual != expected:
            raise CorruptDatasetError(
                f"{path} is corrupted or truncated ({stat.st_size} bytes, md5 {actual}, expected "
                f"{expected}). Delete {folder} (and {STL10_ARCHIVE} next to it) and download "
                f"STL-10 again."
            )
        verified[name] = record
        changed = True
    if changed:
        try:
            marker.write_text(json.dumps(verified, indent=1))
        except OSError:
            pass  # a read-only copy: verify again next time


def _md5(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _check_stl10_image_file(path: Path) -> None:
    """A cheap check before the md5: the size must be a whole number of images."""
    image_bytes = 3 * STL10_SIZE * STL10_SIZE
    size = path.stat().st_size
    if size == 0 or size % image_bytes:
        raise CorruptDatasetError(
            f"{path} has {size} bytes, not a whole number of {image_bytes}-byte STL-10 images: "
            f"the file is truncated. Delete it (and {STL10_ARCHIVE}) and download STL-10 again."
        )


def _read_stl10_images(path: Path) -> torch.Tensor:
    """Memory-map an STL-10 image file as uint8 (N, 3, 96, 96).

    The format stores each image as 3 planes of 96 x 96 in column-major order, so the file
    reshapes to (N, 3, 96, 96) with the last two axes swapped: a transposed view, no copy.
    """
    image_bytes = 3 * STL10_SIZE * STL10_SIZE
    size = path.stat().st_size
    # mode "c" (copy-on-write) gives a writable array, so torch does not warn, and never
    # writes back to the file
    shape = (size // image_bytes, 3, STL10_SIZE, STL10_SIZE)
    array = np.memmap(path, dtype=np.uint8, mode="c", shape=shape)
    return torch.from_numpy(array).transpose(2, 3)


def _read_stl10_labels(path: Path) -> torch.Tensor:
    labels = torch.from_numpy(np.fromfile(path, dtype=np.uint8).astype(np.int64))
    if len(labels) == 0 or labels.min() < 1 or labels.max() > 10:
        raise CorruptDatasetError(
            f"{path} holds labels outside 1..10: the file is corrupted. Delete it and download "
            f"STL-10 again."
        )
    return labels - 1  # 1..10 on disk
# ---------------------------------------------------------------------------------------
# The embedded synthetic dataset

SYNTHETIC_CLASSES = [
    "disk", "square", "triangle", "ring", "cross",
    "star", "house", "tree", "crescent", "striped disk",
]
SYNTHETIC_SIZES = {"unlabeled": 100_000, "train": 5_000, "test": 8_000}
OBJECT_RADIUS = (0.30, 0.45)  # range of the object's radius, in image widths
_SPLIT_IDS = {"unlabeled": 1, "train": 2, "test": 3}
_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (int64 tensors holding values < 2^32, products stay < 2^63)."""
    x = x & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


class _Draws:
    """Uniform random numbers that depend only on (seed, split, image index, draw number),
    so image i is the same whether it is generated alone or in any batch."""

    def __init__(self, seed: int, split: str, index: torch.Tensor):
        base = _hash32(torch.tensor(seed * 4099 + _SPLIT_IDS[split]))
        self.keys = _hash32(base ^ _hash32(index))
        self.count = 0

    def uniform(self, low: float = 0.0, high: float = 1.0, *shape: int) -> torch.Tensor:
        """(B, *shape) uniform in [low, high)."""
        n = math.prod(shape)
        counter = torch.arange(self.count, self.count + n) * 0x9E3779B1
        self.count += n
        bits = _hash32(self.keys[:, None] ^ _hash32(counter)[None, :])
        values = bits.float().div_(2.0**32).mul_(high - low).add_(low)
        return values.reshape(len(self.keys), *shape)


def _soft(distance: torch.Tensor, pixel: torch.Tensor | float) -> torch.Tensor:
    """Coverage of a shape from its signed distance (negative inside): an antialiased edge
    one pixel wide."""
    return (0.5 - distance / pixel).clamp_(0, 1)


def _box(u: torch.Tensor, v: torch.Tensor, cu: float, cv: float, hu: float, hv: float):
    return torch.maximum((u - cu).abs() - hu, (v - cv).abs() - hv)


def _circle(u: torch.Tensor, v: torch.Tensor, cu: float, cv: float, radius: float):
    return torch.hypot(u - cu, v - cv) - radius


def _triangle_up(u: torch.Tensor, v: torch.Tensor, apex: float, base: float, half_width: float):
    """Isosceles triangle, apex (0, apex) above the base at height `base` (v points up)."""
    height = apex - base
    norm = math.hypot(height, half_width)
    side = (u.abs() * height + (v - apex) * half_width) / norm
    return torch.maximum(side, base - v)


def _shape_distance(label: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance of class `label`'s shape in object coordinates (u right, v up, the
    shape fits the unit disk). Union = min, intersection = max, cut = max(a, -b)."""
    if label in (0, 9):  # disk, striped disk (the stripes are painted later)
        return _circle(u, v, 0, 0, 0.9)
    if label == 1:
        return _box(u, v, 0, 0, 0.68, 0.68)
    if label == 2:
        return _triangle_up(u, v, 0.9, -0.7, 0.85)
    if label == 3:
        return (torch.hypot(u, v) - 0.68).abs() - 0.22
    if label == 4:
        return torch.minimum(_box(u, v, 0, 0, 0.25, 0.85), _box(u, v, 0, 0, 0.85, 0.25))
    if label == 5:  # five-pointed star, one point up
        angle = torch.atan2(u, v)
        return torch.hypot(u, v) - (0.6 + 0.32 * torch.cos(5 * angle))
    if label == 6:  # house: walls, a roof on top, a door cut out at the bottom
        walls = _box(u, v, 0, -0.4, 0.62, 0.5)
        roof = _triangle_up(u, v, 0.9, 0.1, 0.85)
        door = _box(u, v, 0.2, -0.65, 0.14, 0.26)
        return torch.maximum(torch.minimum(walls, roof), -door)
    if label == 7:  # tree: a trunk under a round crown
        return torch.minimum(_box(u, v, 0, -0.55, 0.13, 0.4), _circle(u, v, 0, 0.25, 0.6))
    if label == 8:
        return torch.maximum(_circle(u, v, 0, 0, 0.9), -_circle(u, v, 0.42, 0.18, 0.72))
    raise ValueError(f"unknown synthetic class {label}")


def _ellipse(x: torch.Tensor, y: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor,
             rx: torch.Tensor, ry: torch.Tensor, pixel: float) -> torch.Tensor:
    """Coverage (B, S, S) of axis-aligned ellipses, one per image ((B,) parameters).
    The x and y terms are computed on one row and one column and only then broadcast."""
    cx, cy, rx, ry = (t[:, None, None] for t in (cx, cy, rx, ry))
    q = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    return _soft((q.sqrt_() - 1) * torch.minimum(rx, ry), pixel)


def synthetic_images(seed: int, split: str, index: torch.Tensor, image_size: int) -> torch.Tensor:
    """Render images `index` of a synthetic split: uint8 (len(index), 3, S, S).

    Every random choice comes from `_Draws`, a hash of (seed, split, index, draw number), so
    an image never depends on which other images are rendered with it.
    """
    n, size = len(index), image_size
    labels = index % len(SYNTHETIC_CLASSES)
    draw = _Draws(seed, split, index)
    pixel = 1.0 / size
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y = coords.view(1, size, 1)  # 0 at the top, 1 at the bottom
    x = coords.view(1, 1, size)

    def col(t: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, 1, 1), to broadcast over pixels
        return t.view(n, 1, 1)

    def rgb(t: torch.Tensor) -> torch.Tensor:  # (B, 3) -> (B, 3, 1, 1)
        return t.view(n, 3, 1, 1)

    # Scene layout: a tilted horizon, the sun somewhere in the sky, an object on the ground.
    horizon_y = draw.uniform(0.35, 0.6)
    horizon = col(horizon_y) + col(draw.uniform(-0.1, 0.1)) * (x - 0.5)  # (B, S, S)
    sun_x, sun_y = draw.uniform(0.05, 0.95), horizon_y * draw.uniform(0.15, 0.7)
    radius = draw.uniform(*OBJECT_RADIUS)
    obj_x = 0.5 + (0.5 - radius) * draw.uniform(-0.8, 0.8)  # the object stays in the frame
    obj_y = horizon_y + (1 - radius - horizon_y) * draw.uniform(0.3, 1.0)
    angle = draw.uniform(-0.45, 0.45)  # radians: objects stay roughly upright
    sky_top, sky_low, ground_far, ground_near, obj_colour, stripe_colour, stone_colour = (
        draw.uniform(0, 1, 3) for _ in range(7)
    )
    sky_low = 0.5 * sky_low + 0.5  # pale near the horizon

    # Sky: a vertical gradient from the top to the horizon, brighter around the sun.
    t = (y / col(horizon_y)).clamp(0, 1)[:, None]  # (B, 1, S, 1)
    sky = rgb(sky_top) + (rgb(sky_low) - rgb(sky_top)) * t
    sun_distance = torch.hypot(x - col(sun_x), y - col(sun_y))
    sky = sky + (0.35 * torch.exp(-((sun_distance / 0.12) ** 2)))[:, None]

    # Ground: far colour at the horizon to near colour at the bottom, with furrows that get
    # denser towards the horizon (perspective).
    depth = ((y - horizon) / (1 - horizon)).clamp_(0, 1)  # 0 at the horizon, 1 at the bottom
    furrows = 1 + 0.12 * depth * torch.sin(3.0 / (depth + 0.08) + col(draw.uniform(0, 6.3)))
    ground = rgb(ground_far) + (rgb(ground_near) - rgb(ground_far)) * depth[:, None]
    ground = ground * furrows[:, None]

    # The object is lit from the sun and casts a shadow on the ground away from it.
    light = torch.stack((sun_x - obj_x, sun_y - obj_y), dim=1)
    light = light / light.norm(dim=1, keepdim=True)
    shadow = _ellipse(x, y, obj_x - light[:, 0] * radius * 0.9, obj_y + 0.85 * radius,
                      1.2 * radius, 0.22 * radius, pixel)
    ground = ground * (1 - 0.45 * shadow)[:, None]
    land = _soft(horizon - y, pixel)[:, None]  # 1 below the horizon
    image = torch.lerp(sky, ground, land)

    # Clutter: stones on the ground, larger towards the viewer; clouds in the sky.
    stones = torch.zeros(n, size, size)
    for _ in range(4):
        stone_depth = draw.uniform(0.05, 1)
        stone_size = 0.008 + 0.035 * stone_depth
        stone_y = horizon_y + stone_depth * (1 - horizon_y)
        stones = torch.maximum(stones, _ellipse(x, y, draw.uniform(0, 1), stone_y,
                                                1.6 * stone_size, stone_size, pixel))
    image = torch.lerp(image, rgb(stone_colour) * 0.6, stones[:, None])

    # Object coordinates: centred on the object, rotated, scaled to the unit disk, v up.
    dx, dy = (x - col(obj_x)) / col(radius), (col(obj_y) - y) / col(radius)
    cos, sin = col(torch.cos(angle)), col(torch.sin(angle))
    u, v = cos * dx + sin * dy, cos * dy - sin * dx
    distance = torch.empty(n, size, size)
    for label in range(len(SYNTHETIC_CLASSES)):
        rows = (labels == label).nonzero().squeeze(1)
        if len(rows):
            distance[rows] = _shape_distance(label, u[rows], v[rows])
    coverage = _soft(distance * col(radius), pixel)[:, None]
    shade = (0.8 + 0.3 * (dx * col(light[:, 0]) - dy * col(light[:, 1])).clamp_(-1, 1))[:, None]
    paint = rgb(obj_colour) * shade
    striped = (labels == 9).nonzero().squeeze(1)
    if len(striped):
        stripes = (torch.sin(7 * u[striped]) > 0)[:, None]
        stripe_paint = rgb(stripe_colour)[striped] * shade[striped]
        paint[striped] = torch.where(stripes, stripe_paint, paint[striped])
    image = torch.lerp(image, paint, coverage)

    clouds = torch.zeros(n, size, size)
    for _ in range(3):
        cloud = _ellipse(x, y, draw.uniform(0, 1), horizon_y * draw.uniform(0.1, 0.8),
                         draw.uniform(0.06, 0.16), draw.uniform(0.02, 0.05), pixel)
        clouds = torch.maximum(clouds, cloud)
    sun = _soft(sun_distance - 0.05, pixel)
    image = torch.lerp(image, torch.ones(()), torch.maximum(0.6 * clouds, sun)[:, None])

    image = image.add_(_pixel_noise(draw, size, amplitude=0.04)[:, None])
    return image.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def _pixel_noise(draw: "_Draws", size: int, amplitude: float) -> torch.Tensor:
    """(B, S, S) uniform noise in [-amplitude, amplitude]: a window, at a per-image random
    offset, into one fixed noise sequence (much cheaper than hashing every pixel)."""
    bank_size = 1 << 16
    bank = _hash32(torch.arange(bank_size + size * size) * 0x9E3779B1).float()
    bank = bank.div_(2.0**31).sub_(1).mul_(amplitude)
    offsets = (draw.uniform(0, 1) * bank_size).long()
    windows = bank.unfold(0, size * size, 1)[offsets]
    return windows.view(-1, size, size)


def synthetic_split(split: str, seed: int = 0, image_size: int = 96, limit: int = 0,
                    size: int | None = None, chunk: int = 128) -> ImageSet:
    """A split of the embedded offline dataset: images 0..n-1 with n = limit, or the split's
    size (SYNTHETIC_SIZES, which are STL-10's, or `size`) when limit is 0.


    Each image is a small outdoor scene drawn procedurally with torch, a whole batch at once:
    a sky whose colour runs from the top of the image down to a slightly tilted horizon (at 35-60%
    of the height), brighter around a sun and dotted with soft clouds; below it, ground whose colour
    changes from the horizon to the bottom edge, with furrows that get denser towards the horizon
    and stones that get larger towards the viewer (perspective); and one object standing on the
    ground, lit from the side of the sun (a brightness gradient across it) and casting a shadow
    on the ground away from the sun. The class is the object's shape: disk, square, triangle, ring,
    cross, star, house (walls, roof and door), tree (trunk under a crown), crescent and striped disk
    (a disk told apart only by its texture). Every colour is drawn at random independently of the
    class, and the object's position, size (radius 30-45% of the width) and rotation (up to 26
    degrees) vary, next to clutter (clouds, stones) and pixel noise, so a classifier has to learn
    shapes. The object is large on purpose: at 48 px on a 4 x 4 grid it spans about three patches
    each way, so its parts (a roof, a trunk, a star's points) fall in different patches, and
    placing a patch of the object means recognising which part of which shape it shows.
    For the puzzle, position is partly inferable: a patch of sky belongs near the top, furrow
    density and stone size tell the distance from the horizon, and the parts of an object (a roof
    above walls, a crown above a trunk) only fit together one way; but colours change from image
    to image, so no single pixel gives its position away, and left and right are only told apart
    by the sun and the light and shadow it causes.
    Image i of a split depends only on (seed, split, i): every random number is a hash of those
    (no sequential random generator), so any subset is cheap to make and always the same.
    Labels are i % 10, so every split is balanced. Edges are antialiased from signed distance
    functions, so the images look alike at any size.
    """
    if split not in SYNTHETIC_SIZES:
        raise ValueError(f"split={split!r} is invalid: choose one of {tuple(SYNTHETIC_SIZES)}")
    total = size if size is not None else SYNTHETIC_SIZES[split]
    n = min(limit, total) if limit > 0 else total
    index = torch.arange(n)
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    # chunks keep the intermediate images in the CPU cache
    for start in range(0, n, chunk):
        part = index[start : start + chunk]
        images[start : start + chunk] = synthetic_images(seed, split, part, image_size)
    if split == "unlabeled":
        return ImageSet(images, None, [])
    return ImageSet(images, index % len(SYNTHETIC_CLASSES), list(SYNTHETIC_CLASSES))


# ---------------------------------------------------------------------------------------
# Folder of the user's own images

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class UnreadableImageError(ValueError):
    """An image file of a folder dataset could not be decoded (unreadable_images='error')."""


UNREADABLE_IMAGES = ("skip", "error")


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
    if 0 < limit < len(files):
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(files), generator=generator)[:limit].sort().values
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
        temporary = cache.with_name(f".{cache.name}.tmp")
        torch.save({"images": data.images, "labels": data.labels, "classes": classes}, temporary)
        os.replace(temporary, cache)
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


# ---------------------------------------------------------------------------------------
# Labelled subsets (NPC) and the validation part of the train split


def stratified_indices(labels: torch.Tensor, per_class: int, seed: int = 42,
                       exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Sorted indices of `per_class` random images of every class (the original's NPC).

    Reproducible from `seed`, and nested: the images chosen for a smaller per_class are
    among those chosen for a larger one. `exclude` removes indices (e.g. the validation
    part) from the candidates first.
    """
    if per_class < 0:
        raise ValueError(f"per_class={per_class} must be >= 0")
    labels = torch.as_tensor(labels)
    candidates = torch.ones(len(labels), dtype=torch.bool)
    if exclude is not None:
        candidates[torch.as_tensor(exclude, dtype=torch.long)] = False
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    per_class_pools = [
        ((labels == c) & candidates).nonzero().squeeze(1) for c in range(num_classes)
    ]
    counts = [len(pool) for pool in per_class_pools]
    for c, count in enumerate(counts):
        if per_class > count:
            excluded = " (after the excluded ones)" if exclude is not None else ""
            raise ValueError(
                f"per_class={per_class} is too many: class {c} has only {count} images{excluded}; "
                f"the largest number per class available is {min(counts)}"
            )
    generator = torch.Generator().manual_seed(seed)
    chosen = [
        pool[torch.randperm(len(pool), generator=generator)[:per_class]] for pool in per_class_pools
    ]
    if not chosen:
        return torch.empty(0, dtype=torch.long)
    return torch.cat(chosen).sort().values


def labelled_split(labels: torch.Tensor, npc: int, val_per_class: int = 0,
                   seed: int = 42) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx): `val_per_class` validation images per class are drawn first,
    then `npc` training images per class from the rest, so model choices need not be made
    on the test set. Both are sorted and reproducible from `seed`."""
    val = stratified_indices(labels, val_per_class, seed=seed + 1)
    train = stratified_indices(labels, npc, seed=seed, exclude=val)
    return train, val


# ---------------------------------------------------------------------------------------
# Batches on the device


def _derive_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (no collisions between e.g. (1, 10) and (11, 0))."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class BatchLoader:
    """Batches of an ImageSet on the training device, augmented there as a whole batch.

    batch_size is the global batch. With world_size > 1 every rank draws the same
    permutation of (seed, epoch), cuts it into global batches and takes its own contiguous
    part of each (batch_size // world_size images), so N processes see exactly the global
    batches one process would. With shuffle=False and drop_last=False (evaluation) every
    image is seen exactly once, over all ranks together.

    The images stay uint8 until they are on the device: either the whole split is copied
    there once (`resident`; default on CUDA when it is under 2 GiB) or each batch is
    gathered into pinned memory and copied asynchronously. The augmentation generator lives
    on the device and is seeded from (seed, epoch, rank), so a run is reproducible, also
    when resumed at an epoch.

    Call set_epoch(epoch) before each epoch, like DistributedSampler; without it, each
    complete pass moves on to the next epoch by itself, so epochs never repeat by accident.
    """

    RESIDENT_LIMIT_BYTES = 2 << 30

    def __init__(self, data: ImageSet, batch_size: int, *, shuffle: bool, drop_last: bool,
                 device: torch.device | str = "cpu", augment: AugmentSpec | None = None,
                 seed: int = 0, resident: bool | None = None, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must satisfy 0 <= rank < world_size={world_size}")
        if batch_size % world_size:
            raise ValueError(
                f"the global batch_size={batch_size} must be divisible by world_size={world_size} "
                f"(each process takes batch_size // world_size images of every batch)"
            )
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.device = torch.device(device)
        self.augment = augment
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        if resident is None:
            small = data.images.nelement() < self.RESIDENT_LIMIT_BYTES  # uint8: one byte each
            resident = self.device.type == "cuda" and small
        self.resident = resident
        self._pin = self.device.type == "cuda" and not resident
        if resident:
            self._images = data.images.to(self.device)
            self._labels = None if data.labels is None else data.labels.to(self.device)
        else:
            self._images = data.images
            self._labels = data.labels

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[torch.Tensor]:
        n = len(self.data)
        if self.shuffle:
            generator = torch.Generator().manual_seed(_derive_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        batches = list(order.split(self.batch_size))
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle and batches and len(batches[-1]) < self.world_size:
            # A training rank left without a part of the last batch would skip a step that
            # the other ranks' DDP gradient all-reduce waits for, and the run would hang.
            batches.pop()
        return batches

    def _local_batches(self) -> list[torch.Tensor]:
        """This rank's contiguous part of every global batch; the last, shorter batch is
        split as evenly as possible (some ranks may get nothing of it)."""
        local = [batch.tensor_split(self.world_size)[self.rank] for batch in self._global_batches()]
        return [batch for batch in local if len(batch)]

    def __len__(self) -> int:
        return len(self._local_batches())

    def __iter__(self):
        generator = None
        if self.augment is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(_derive_seed(self.seed, self.epoch, self.rank))
        for index in self._local_batches():
            images, labels = self._fetch(index)
            if self.augment is None:
                yield normalize(images), labels
            else:
                yield augment(images, self.augment, generator), labels
        self.epoch += 1

    def _fetch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 images and int64 labels of `index`, on the device."""
        if self.resident:
            index = index.to(self.device)
            labels = None if self._labels is None else self._labels[index]
            return self._images[index], labels
        labels = None if self._labels is None else self._labels[index]
        if self._pin:
            shape = (len(index), *self._images.shape[1:])
            images = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            torch.index_select(self._images, 0, index, out=images)
            if labels is not None:
                labels = labels.pin_memory()
        else:
            images = self._images[index]
        images = images.to(self.device, non_blocking=True)
        labels = None if labels is None else labels.to(self.device, non_blocking=True)
        return images, labels
