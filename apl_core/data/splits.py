"""Which images a run uses: labelled subsets per class (NPC), the validation part, the test
subset, pretraining's held-out images and the kNN monitor's sets. The engine and the notebooks
take them from here, so every method of a comparison sees the same images, and every analysis
of a pretraining the images it trains on and holds out (pretraining_images)."""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..config import Config, FinetuneConfig, PretrainConfig
from .imageset import ImageSet
from .sources import load_split

KNN_QUERIES = 2000  # test images (stratified) scored by the kNN monitor in pretraining
# The test subset (test_per_class) is drawn with this seed whatever the label seed, so runs that
# draw their own labelled images are still compared on the same test images.
TEST_SEED = 42

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


def data_source(config: Config, split: str) -> dict:
    """The arguments of `load_split` for `split` of the config's data: a folder of your own
    images is decoded once into runs_dir/cache."""
    cache = str(Path(config.runs_dir) / "cache") if config.dataset == "folder" else None
    return dict(dataset=config.dataset, split=split, data_dir=config.data_dir,
                image_size=config.image_size, unreadable_images=config.unreadable_images,
                cache_dir=cache)


@functools.lru_cache(maxsize=4)
def load_labelled_split(dataset: str, split: str, data_dir: str, image_size: int,
                        unreadable_images: str = "skip", cache_dir: str | None = None) -> ImageSet:
    """A whole labelled split ('train' or 'test'), kept in memory: the fine-tuning runs of a
    notebook or a test session (probe, full, BENCHMARK, baselines) all use the same ones."""
    return load_split(dataset, split, data_dir, image_size,
                      unreadable_images=unreadable_images, cache_dir=cache_dir)


def finetune_sets(config: FinetuneConfig) -> tuple[ImageSet, ImageSet | None, ImageSet]:
    """(labelled training images, validation images or None, test images). label_seed draws
    the first two; the test images are the same for every label seed (TEST_SEED)."""
    labelled = load_labelled_split(**data_source(config, "train"))
    if labelled.labels is None:
        raise ValueError(f"dataset {config.dataset!r} has no labels to fine-tune on")
    if len(labelled.classes) != config.num_classes:
        raise ValueError(f"num_classes={config.num_classes} but dataset {config.dataset!r} has "
                         f"{len(labelled.classes)} classes; set num_classes="
                         f"{len(labelled.classes)}")
    train_index, val_index = labelled_split(labelled.labels, config.npc, config.val_per_class,
                                            config.label_seed)
    test = load_labelled_split(**data_source(config, "test"))
    if config.test_per_class:
        test = test.subset(stratified_indices(test.labels, config.test_per_class,
                                              seed=TEST_SEED))
    val = labelled.subset(val_index) if len(val_index) else None
    return labelled.subset(train_index), val, test


def split_holdout(images: ImageSet, holdout: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """A seeded random `holdout` images for held-out position accuracy; the rest trains."""
    if holdout >= len(images):
        raise ValueError(f"holdout_images={holdout} leaves no training images out of "
                         f"{len(images)}; lower holdout_images or raise num_images")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    train, held_out = order[holdout:].sort().values, order[:holdout].sort().values
    return images.subset(train), images.subset(held_out)


def pretraining_images(config: PretrainConfig,
                       data_dir: str | Path | None = None) -> tuple[ImageSet, ImageSet]:
    """(trained on, held out): the images of pretraining `config`, its num_images drawn with
    its seed and split by split_holdout. data_dir: where the images are here, when not where
    the run read them."""
    if data_dir is not None:
        config = config.replace(data_dir=str(data_dir))
    images = load_split(**data_source(config, "unlabeled"), limit=config.num_images,
                        seed=config.seed)
    return split_holdout(images, config.holdout_images, config.seed)


def held_out_images(config: PretrainConfig, data_dir: str | Path | None = None) -> ImageSet:
    """The images pretraining `config` held out for its position accuracy."""
    return pretraining_images(config, data_dir)[1]


def knn_sets(config: PretrainConfig) -> tuple[ImageSet, ImageSet] | None:
    """The kNN monitor's bank (labelled train split) and queries (a stratified test subset);
    None, with a note, when the dataset has no labels."""
    bank = load_labelled_split(**data_source(config, "train"))
    if bank.labels is None:
        print(f"note: dataset {config.dataset!r} has no labels; the kNN monitor is skipped")
        return None
    test = load_labelled_split(**data_source(config, "test"))
    per_class = min(KNN_QUERIES // len(test.classes), int(test.labels.bincount().min()))
    return bank, test.subset(stratified_indices(test.labels, per_class, seed=config.seed))
