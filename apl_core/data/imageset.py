"""The one type every image source returns, and what applies to any of them."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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


def random_index(count: int, limit: int, seed: int) -> torch.Tensor | None:
    """`limit` of `count` positions drawn with `seed`, sorted (a memory-mapped file is then
    read front to back); None when limit is 0 or not below count: keep everything."""
    if limit <= 0 or limit >= count:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=generator)[:limit].sort().values


def random_subset(data: ImageSet, limit: int, seed: int) -> ImageSet:
    """`limit` random images of `data` drawn with `seed` (all of them when limit is 0)."""
    index = random_index(len(data), limit, seed)
    return data if index is None else data.subset(index)


def resize_split(data: ImageSet, image_size: int, name: str, chunk: int = 1024) -> ImageSet:
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
