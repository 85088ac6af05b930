"""Batches of an ImageSet on the training device, augmented there as a whole batch."""
from __future__ import annotations

import hashlib

import torch

from ..augment import AugmentSpec, MixSpec, augment, mix, normalize
from .imageset import ImageSet


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

    With `mix` (MixUp / CutMix, a labelled training set) every augmented batch is mixed and
    its labels are soft targets (B, classes).
    """

    RESIDENT_LIMIT_BYTES = 2 << 30

    def __init__(self, data: ImageSet, batch_size: int, *, shuffle: bool, drop_last: bool,
                 device: torch.device | str = "cpu", augment: AugmentSpec | None = None,
                 mix: MixSpec | None = None, seed: int = 0, resident: bool | None = None, rank: int = 0, world_size: int = 1):
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
        self.mix = mix
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

    def indices(self) -> list[torch.Tensor]:
        """The images of this rank's batches, as positions in the data, in the order of the
        next pass (evaluation: which image each prediction belongs to)."""
        return self._local_batches()

    def __iter__(self):
        generator = None
        if self.augment is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(_derive_seed(self.seed, self.epoch, self.rank))
        for index in self._local_batches():
            images, labels = self._fetch(index)
            images = normalize(images) if self.augment is None else \
                augment(images, self.augment, generator)
            if self.mix is not None:
                images, labels = mix(images, labels, self.mix)
            yield images, labels
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
