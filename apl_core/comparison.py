"""The experiment of notebook 04: APL against the same model from scratch, with and without
positional embeddings, and the CNNs.

Every method is one `FinetuneConfig` built from the profile by `method_config`, with the
settings the profile's hyper-parameter search chose for it (`apl_core.tuning`); all of them
see the same labelled images and the same test images. `compare` runs a sweep over labelled
images per class (NPC) and returns one row per (method, NPC); `search` runs the search's
candidates on the validation part; `knn_comparison` probes the frozen features without
training anything. Seed s draws its own labelled subset and validation part (label seed
42 + s; seed 0 keeps the original's 42); the test images are the same for every seed.
`benchmarks/claim_seeds.py` repeats the comparison over seeds.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .analysis import feature_probe, knn_accuracy, knn_vote, pooled_features
from .config import ARCHITECTURE_FIELDS, FinetuneConfig, PretrainConfig, profile_config
from .data import finetune_sets
from .device import resolve_device
from .model import build_pretrain_model
from .rundir import last_evaluation
from .train import finetune, load_pretrained
from .tuning import candidates, tuned_settings

METHODS = (
    "APL fine-tune",  # pretrained transformer + new linear head, all trained
    "APL linear probe",  # only the new head trains on the frozen pretrained features
    "BENCHMARK",  # the same architecture from random initialisation, all trained
    "BENCHMARK linear probe",  # only the head trains on frozen random-init features
    "BENCHMARK + positions",  # BENCHMARK with learned positional embeddings: a ViT
    "S-CNN",
    "S-ResNet-18",
)
CNN_MODELS = {"S-CNN": "s-cnn", "S-ResNet-18": "s-resnet"}


def method_config(method: str, npc: int, profile: str, pretrain_run: str,
                  pretrained: PretrainConfig, tuned: bool = True,
                  **settings) -> FinetuneConfig:
    """The fine-tuning config of `method` at `npc` labelled images per class: the profile's
    fine-tuning settings (its probe settings for the linear probes), the pretrained run's
    architecture and image size, the labels of the seed (label_seed 42 + seed), the settings
    the profile's search chose (unless tuned=False), then `settings` (data_dir, runs_dir,
    device, any FinetuneConfig field), which win."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is invalid: choose from {METHODS}")
    values = dict(npc=npc, image_size=pretrained.image_size,
                  label_seed=label_seed(settings.get("seed", 0)))
    probe = method.endswith("linear probe")
    if method in CNN_MODELS:
        values["model"] = CNN_MODELS[method]
    else:
        values.update(model="apl",
                      architecture={k: getattr(pretrained, k) for k in ARCHITECTURE_FIELDS},
                      pretrained=pretrain_run if method.startswith("APL") else "",
                      positional_embedding=method.endswith("+ positions"))
    if tuned:
        values.update(tuned_settings(profile).get((method, npc), {}))
    return profile_config(profile, "probe" if probe else "finetune", **{**values, **settings})


def label_seed(seed: int) -> int:
    """The label seed of a comparison's seed: 42 + seed, so seed 0 draws the original's 42."""
    return FinetuneConfig.label_seed + seed


def train_all(configs: list[FinetuneConfig], workers: int) -> None:
    """Finish every run of `configs` (finished runs are left as they are), in `workers`
    processes that share the CPU threads. Small models use two cores better as two runs at a
    time than as one run on two threads."""
    threads = max(1, torch.get_num_threads() // workers)
    with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        for _ in pool.map(_finish, configs):
            pass


def _finish(config: FinetuneConfig) -> None:
    finetune(config, resume="auto")


def _results(configs: list[FinetuneConfig], workers: int):
    """Each config's finished run, in order: with workers > 1 all are trained first, that many
    at a time, and read back; otherwise each is trained as it is asked for (so progress can be
    reported run by run)."""
    if workers > 1:
        train_all(configs, workers)
    for config in configs:
        yield finetune(config, resume="auto")


def compare(profile: str, pretrain_run: str, npcs, methods=METHODS,
            report: Callable[[dict], None] | None = None, workers: int = 1,
            **settings) -> list[dict]:
    """Fine-tune every method at every NPC (finished runs are read back, not retrained).
    One row per run: method, npc, lr, epochs, the last evaluation's test (and validation)
    accuracy, the last epoch's training accuracy, the number of test images, the training
    time and the run directory. `report(row)` is called after each run."""
    _, pretrained = load_pretrained(pretrain_run, runs_dir=settings.get("runs_dir", "runs"))
    configs = {(method, npc): method_config(method, npc, profile, pretrain_run, pretrained,
                                            **settings)
               for npc in npcs for method in methods}
    test_images = len(finetune_sets(next(iter(configs.values())))[2])  # the same for every run
    rows = []
    for ((method, npc), config), result in zip(configs.items(),
                                               _results(list(configs.values()), workers)):
        last = last_evaluation(result.metrics, result.run_dir)
        row = dict(method=method, npc=npc, lr=config.lr, epochs=result.metrics[-1]["epoch"],
                   test_images=test_images, test_top1=last["test_top1"],
                   test_top5=last["test_top5"], test_nll=last["test_nll"],
                   train_top1=result.metrics[-1]["train_top1"],
                   train_time_s=sum(r["epoch_time_s"] for r in result.metrics),
                   run_dir=str(result.run_dir.resolve()))
        if "val_top1" in last:
            row["val_top1"] = last["val_top1"]
        rows.append(row)
        if report is not None:
            report(row)
    return rows


def search(profile: str, pretrain_run: str, npcs, methods=METHODS,
           report: Callable[[dict], None] | None = None, workers: int = 1,
           **settings) -> list[dict]:
    """The hyper-parameter search (`apl_core.tuning`): every candidate of every method at every
    NPC, trained on the labelled images and scored on the validation part only (the test set
    is not evaluated). One row per candidate: method, npc, lr, epochs, steps, val_top1,
    train_top1 (the last epoch's, augmented), seconds and the run's name. Finished runs are
    read back, so an interrupted search continues where it stopped."""
    _, pretrained = load_pretrained(pretrain_run, runs_dir=settings.get("runs_dir", "runs"))
    runs = []
    for npc in npcs:
        for method in methods:
            base = method_config(method, npc, profile, pretrain_run, pretrained, tuned=False,
                                 **{**settings, "evaluate_test": False})
            if not base.val_per_class:
                raise ValueError(f"the {profile} profile has no validation part to search on: "
                                 f"give val_per_class > 0")
            runs += [(method, npc, base.replace(**c)) for c in candidates(base)]
    rows = []
    for (method, npc, config), result in zip(runs, _results([c for *_, c in runs], workers)):
        last = result.metrics[-1]
        rows.append(dict(method=method, npc=npc, lr=config.lr, epochs=config.epochs,
                         steps=last["step"], val_top1=last["val_top1"],
                         train_top1=last["train_top1"],
                         seconds=sum(r["epoch_time_s"] for r in result.metrics),
                         run=result.run_dir.name))
        if report is not None:
            report(rows[-1])
    return rows


def knn_comparison(profile: str, pretrain_run: str, npc: int, k: int = 20, seed: int = 0,
                   queries: str = "test", **settings) -> dict[str, float]:
    """kNN accuracy of the frozen APL features and of the same transformer with random
    weights (seeded), with the NPC-`npc` labelled images of `seed` as the bank. queries: 'test' or
    'val' (the validation part, for choices that must not look at the test set)."""
    if queries not in ("test", "val"):
        raise ValueError(f"queries={queries!r} is invalid: use 'test' or 'val'")
    runs_dir = settings.get("runs_dir", "runs")
    device = resolve_device(settings.get("device", "auto"))
    apl_model, pretrained = load_pretrained(pretrain_run, runs_dir=runs_dir, device=device)
    config = method_config("APL fine-tune", npc, profile, pretrain_run, pretrained, seed=seed,
                           **settings)
    labelled, val, test = finetune_sets(config)
    if queries == "val" and val is None:
        raise ValueError("queries='val' needs a validation part: set val_per_class > 0")
    query_set = test if queries == "test" else val
    torch.manual_seed(seed)
    random_model = build_pretrain_model(pretrained).to(device).eval()
    return {name: knn_accuracy(model.transformer, labelled, query_set, k=k, device=device)
            for name, model in (("APL-pretrained features", apl_model),
                                ("random-init features", random_model))}


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
    config = method_config("APL fine-tune", npc, profile, pretrain_run, pretrained,
                           tuned=False, seed=seed, **settings)
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
