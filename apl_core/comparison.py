"""The methods of notebook 04 and the probes of frozen features.

Every trained method is one `FinetuneConfig` built from the profile by `method_config`: APL
against the same transformer from scratch, with and without positional embeddings, and the
CNNs; all of them see the same labelled images and the same test images. How each is trained
and at which rate (its field's recipe, the converged search's choice) is `apl_core.search`.
`feature_comparison` judges the frozen features without fine-tuning: kNN and the one linear
probe (logistic regression, its penalty chosen on validation), APL against random init. Seed
s draws its own labelled subset and validation part (label seed 42 + s; seed 0 keeps the
original's 42); the test images are the same for every seed.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import multiprocessing
import os
import signal
import sys

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .analysis import feature_probe, knn_vote, pooled_features
from .config import ARCHITECTURE_FIELDS, FinetuneConfig, PretrainConfig, profile_config
from .data import finetune_sets
from .device import resolve_device
from .model import build_pretrain_model
from .train import finetune, load_pretrained

METHODS = (
    "APL fine-tune",  # pretrained transformer + new linear head, all trained
    "BENCHMARK",  # the same architecture from random initialisation, all trained
    "BENCHMARK + positions",  # BENCHMARK with learned positional embeddings: a ViT
    "S-CNN",
    "S-ResNet-18",
)
CNN_MODELS = {"S-CNN": "s-cnn", "S-ResNet-18": "s-resnet"}


def method_config(method: str, npc: int, profile: str, pretrain_run: str,
                  pretrained: PretrainConfig, **settings) -> FinetuneConfig:
    """The fine-tuning config of `method` at `npc` labelled images per class: the profile's
    fine-tuning settings, the pretrained run's architecture and image size, the labels of the
    seed (label_seed 42 + seed), then `settings` (data_dir, runs_dir, device, any
    FinetuneConfig field), which win."""
    check_methods([method])
    values = dict(npc=npc, image_size=pretrained.image_size,
                  label_seed=label_seed(settings.get("seed", 0)))
    if method in CNN_MODELS:
        values["model"] = CNN_MODELS[method]
    else:
        values.update(model="apl",
                      architecture={k: getattr(pretrained, k) for k in ARCHITECTURE_FIELDS},
                      pretrained=pretrain_run if method.startswith("APL") else "",
                      positional_embedding=method.endswith("+ positions"))
    return profile_config(profile, "finetune", **{**values, **settings})


def check_methods(methods) -> None:
    """Refuse any name in `methods` that is not one of METHODS, naming those that are."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")


def label_seed(seed: int) -> int:
    """The label seed of a comparison's seed: 42 + seed, so seed 0 draws the original's 42."""
    return FinetuneConfig.label_seed + seed


def worker_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """`workers` processes that share the CPU threads, each ended with the process that
    started it. Small models use two cores better as two runs at a time than as one run on
    two threads."""
    threads = max(1, torch.get_num_threads() // workers)
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker, initargs=(threads, os.getpid()))


def _start_worker(threads: int, parent: int) -> None:
    torch.set_num_threads(threads)
    end_with_parent(parent)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def end_with_parent(parent: int) -> None:
    """Have the kernel end this process when `parent` ends (Linux; elsewhere nothing). A
    study stopped with `kill` would otherwise leave its workers training on, two processes
    then writing the same run when it is restarted. A run ended between epochs resumes from
    its last.pt; every file is written atomically."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it ended before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def train_all(configs: list[FinetuneConfig], workers: int,
              finished: Callable[[int], None] | None = None) -> None:
    """Finish every run of `configs` (finished runs are left as they are), `workers` at a
    time; `finished(i)` is called here as the run of configs[i] ends, in the order they end,
    so that a caller can store it before the slowest run is done."""
    with worker_pool(workers) as pool:
        running = {pool.submit(_finish, config): index for index, config in enumerate(configs)}
        for future in concurrent.futures.as_completed(running):
            future.result()  # a failed run stops the study with its error
            if finished is not None:
                finished(running[future])


def _finish(config: FinetuneConfig) -> None:
    finetune(config, resume="auto")


FEATURES = ("APL-pretrained features", "random-init features")


def feature_comparison(profile: str, pretrain_run: str, npc: int, k: int = 20, seed: int = 0,
                       **settings) -> dict[str, dict]:
    """The frozen features of the APL-pretrained transformer and of the same transformer with
    random weights (seeded), judged on the NPC-`npc` labelled images of `seed`: kNN top-1 (k
    neighbours, the labelled images as the bank) and the linear probe (logistic regression,
    its L2 penalty chosen on the validation part, `analysis.feature_probe`), both scored on
    the test images. {features: {knn_top1, probe_top1, probe_penalty, probe_val_top1}}."""
    runs_dir = settings.get("runs_dir", "runs")
    device = resolve_device(settings.get("device", "auto"))
    apl_model, pretrained = load_pretrained(pretrain_run, runs_dir=runs_dir, device=device)
    config = method_config("APL fine-tune", npc, profile, pretrain_run, pretrained, seed=seed,
                           **settings)
    labelled, val, test = finetune_sets(config)
    if val is None:
        raise ValueError("the linear probe chooses its penalty on a validation part: set "
                         "val_per_class > 0")
    torch.manual_seed(seed)
    random_model = build_pretrain_model(pretrained).to(device).eval()
    judged = {}
    for name, model in zip(FEATURES, (apl_model, random_model)):
        pooled = [(pooled_features(model.transformer, part.images, device).cpu(), part.labels)
                  for part in (labelled, val, test)]
        (bank, bank_labels), _, (queries, query_labels) = pooled
        probe = feature_probe(*pooled)
        judged[name] = {
            "knn_top1": knn_vote(F.normalize(bank, dim=-1), bank_labels,
                                 F.normalize(queries, dim=-1), query_labels, k),
            "probe_top1": probe.test_top1, "probe_penalty": probe.penalty,
            "probe_val_top1": probe.val_top1[probe.penalty]}
    return judged
