"""The experiment of notebook 04: APL against the same model from scratch and the CNNs.

Every method is one `FinetuneConfig` built from the profile by `method_config`; all of them
see the same labelled images (label_seed), the same test images and the same schedule.
`compare` runs a sweep over labelled images per class (NPC) and returns one row per
(method, NPC); `knn_comparison` probes the frozen features without training anything.
`benchmarks/claim_seeds.py` repeats both over several pretraining seeds.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .analysis import knn_accuracy
from .config import ARCHITECTURE_FIELDS, FinetuneConfig, PretrainConfig, profile_config
from .data import finetune_sets
from .model import build_pretrain_model
from .rundir import last_evaluation
from .train import finetune, load_pretrained, resolve_device

METHODS = (
    "APL fine-tune",  # pretrained transformer + new linear head, all trained
    "APL linear probe",  # only the new head trains on the frozen pretrained features
    "BENCHMARK",  # the same architecture from random initialisation, all trained
    "BENCHMARK linear probe",  # only the head trains on frozen random-init features
    "S-CNN",
    "S-ResNet-18",
)
CNN_MODELS = {"S-CNN": "s-cnn", "S-ResNet-18": "s-resnet"}


def method_config(method: str, npc: int, profile: str, pretrain_run: str,
                  pretrained: PretrainConfig, **settings) -> FinetuneConfig:
    """The fine-tuning config of `method` at `npc` labelled images per class: the profile's
    fine-tuning settings (its probe settings for the linear probes), the pretrained run's
    architecture and image size, then `settings` (data_dir, runs_dir, device, any
    FinetuneConfig field)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is invalid: choose from {METHODS}")
    values = dict(settings, npc=npc, image_size=pretrained.image_size)
    probe = method.endswith("linear probe")
    if method in CNN_MODELS:
        values["model"] = CNN_MODELS[method]
    else:
        values.update(model="apl",
                      architecture={k: getattr(pretrained, k) for k in ARCHITECTURE_FIELDS},
                      pretrained=pretrain_run if method.startswith("APL") else "")
    return profile_config(profile, "probe" if probe else "finetune", **values)


def compare(profile: str, pretrain_run: str, npcs, methods=METHODS,
            report: Callable[[dict], None] | None = None, **settings) -> list[dict]:
    """Fine-tune every method at every NPC (finished runs are read back, not retrained).
    One row per run: method, npc, the last evaluation's test (and validation) accuracy,
    the number of test images, the epochs, the training time and the run directory.
    `report(row)` is called after each run."""
    _, pretrained = load_pretrained(pretrain_run, runs_dir=settings.get("runs_dir", "runs"))
    reference = method_config(methods[0], npcs[0], profile, pretrain_run, pretrained, **settings)
    test_images = len(finetune_sets(reference)[2])  # every run is tested on these images
    rows = []
    for npc in npcs:
        for method in methods:
            config = method_config(method, npc, profile, pretrain_run, pretrained, **settings)
            result = finetune(config, resume="auto")
            last = last_evaluation(result.metrics, result.run_dir)
            row = dict(method=method, npc=npc, test_images=test_images,
                       test_top1=last["test_top1"],
                       test_top5=last["test_top5"], test_nll=last["test_nll"],
                       train_top1=result.metrics[-1]["train_top1"],
                       epochs=result.metrics[-1]["epoch"],
                       train_time_s=sum(r["epoch_time_s"] for r in result.metrics),
                       run_dir=str(result.run_dir.resolve()))
            if "val_top1" in last:
                row["val_top1"] = last["val_top1"]
            rows.append(row)
            if report is not None:
                report(row)
    return rows


def knn_comparison(profile: str, pretrain_run: str, npc: int, k: int = 20, seed: int = 0,
                   queries: str = "test", **settings) -> dict[str, float]:
    """kNN accuracy of the frozen APL features and of the same transformer with random
    weights (seeded), with the NPC-`npc` labelled images as the bank. queries: 'test' or
    'val' (the validation part, for choices that must not look at the test set)."""
    if queries not in ("test", "val"):
        raise ValueError(f"queries={queries!r} is invalid: use 'test' or 'val'")
    runs_dir = settings.get("runs_dir", "runs")
    device = resolve_device(settings.get("device", "auto"))
    apl_model, pretrained = load_pretrained(pretrain_run, runs_dir=runs_dir, device=device)
    config = method_config("APL fine-tune", npc, profile, pretrain_run, pretrained, **settings)
    labelled, val, test = finetune_sets(config)
    if queries == "val" and val is None:
        raise ValueError("queries='val' needs a validation part: set val_per_class > 0")
    query_set = test if queries == "test" else val
    torch.manual_seed(seed)
    random_model = build_pretrain_model(pretrained).to(device).eval()
    return {name: knn_accuracy(model.transformer, labelled, query_set, k=k, device=device)
            for name, model in (("APL-pretrained features", apl_model),
                                ("random-init features", random_model))}
