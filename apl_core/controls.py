"""Why the method works (notebook 06): controls that change one thing in APL pretraining.

Every control is the same small pretraining (the profile's `controls` budget) with one
setting changed, evaluated the same way:

    APL                  the method, with the profile's G and K
    positional leak      a learned positional embedding added to the tokens: the transformer
                         can read each token's position, so the puzzle needs no image content
    K = k                another crop; K = 0 leaves neighbouring patches touching
    G = g                another grid: a harder or easier puzzle
    original scaling     the original's attention, q, k and v each divided by D^(1/4)

and a random-init model of the APL architecture as the floor. For each: the held-out position
top-1 (the pretext task), and the frozen features' kNN and linear-probe top-1 on the
labelled images (`analysis.knn_vote`, `analysis.feature_probe`, the probe's penalty chosen
on the validation part) and the mean attention distance of every block and head.

Here the controls are configured, run and judged, and their committed results over seeds read
back (`load_controls`, `rows_by_control`, the random-init `floor`); apl_core.control_tables
shows them as notebook 06's tables.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .analysis import (
    attention_maps, border_blanking, feature_probe, interior_blanking, knn_vote,
    mean_attention_distance, pooled_features,
)
from .comparison import label_seed
from .config import PROFILES, PretrainConfig, profile_config, profile_npcs
from .data import finetune_sets, held_out_images
from .device import resolve_device
from .model import build_pretrain_model
from .rundir import read_metrics, train_seconds
from .train import RunResult, load_finetuned, load_pretrained, pretrain, snapshot_path
from .results import RESULTS_DIR, load_results

RANDOM_INIT = "random init"
ATTENTION_IMAGES = 256  # test images whose attention is averaged


BUDGETS = ("small", "main")


def control_configs(profile: str, seed: int = 0, budget: str = "small",
                    **settings) -> dict[str, PretrainConfig]:
    """Every control's pretraining config, by name; `settings` (runs_dir, device, ...) apply
    to all of them. budget: 'small', the profile's controls budget (notebook 06's live
    run), or 'main', the profile's own pretraining (notebook 02's, the course's runs)."""
    profile_npcs(profile)  # a clear error for an unknown profile
    if budget not in BUDGETS:
        raise ValueError(f"budget={budget!r} is invalid: choose one of {BUDGETS}")
    controls = PROFILES[profile]["controls"]
    small = controls["budget"] if budget == "small" else {}
    base = profile_config(profile, "pretrain", **{**small, "seed": seed, "knn_every": 0,
                                                  **settings})
    changes = {f"APL (G = {base.grid}, K = {base.crop})": {},
               "positional leak": {"positional_embedding": True}}
    changes.update({f"K = {k}": {"crop": k} for k in controls["crops"] if k != base.crop})
    changes.update({f"G = {g}": {"grid": g} for g in controls["grids"] if g != base.grid})
    changes["original scaling"] = {"attention_scale": "original"}
    return {name: base.replace(**change) for name, change in changes.items()}


def budget_settings(profile: str, budget: str = "small") -> dict:
    """The pretraining budget every control of `budget` runs at, as its results file records
    it: the settings the profile's controls budget names (images, epochs, ...) with the
    values they take at `budget` ('main': the profile's own pretraining's)."""
    apl = next(iter(control_configs(profile, budget=budget).values()))
    return {name: getattr(apl, name) for name in PROFILES[profile]["controls"]["budget"]}


@dataclass
class LabelledImages:
    """The labelled images the features are judged on: the probe's training images, its
    validation part (for the penalty) and the test images."""

    train: tuple[torch.Tensor, torch.Tensor]  # (uint8 images, labels)
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]


def labelled_sets(profile: str, seed: int = 0, **settings) -> LabelledImages:
    """The profile's largest NPC of labelled images with seed's labels, its validation part
    and the fixed test subset: the sets notebook 04 fine-tunes on at that NPC."""
    keep = {k: v for k, v in settings.items() if k in ("data_dir", "device")}
    config = profile_config(profile, "finetune", npc=max(profile_npcs(profile)),
                            label_seed=label_seed(seed), **keep)
    if not config.val_per_class:  # the probe chooses its penalty on a validation part
        config = config.replace(val_per_class=max(1, config.npc // 2))
    train, val, test = finetune_sets(config)
    return LabelledImages(*((part.images, part.labels) for part in (train, val, test)))


def feature_scores(transformer, sets: LabelledImages, device) -> dict:
    """kNN top-1 (k = 20, the training images as the bank) and the feature probe's test top-1
    and penalty (chosen on the validation part) of the frozen transformer's features."""
    pooled = {part: pooled_features(transformer, getattr(sets, part)[0], device).cpu()
              for part in ("train", "val", "test")}
    labels = {part: getattr(sets, part)[1] for part in pooled}
    knn = knn_vote(F.normalize(pooled["train"], dim=-1), labels["train"],
                   F.normalize(pooled["test"], dim=-1), labels["test"])
    probe = feature_probe(*((pooled[part], labels[part]) for part in ("train", "val", "test")))
    return {"knn_top1": knn, "probe_top1": probe.test_top1, "probe_penalty": probe.penalty}


def judge_features(transformer, sets: LabelledImages, device) -> dict:
    """`feature_scores`, and the mean attention distance per block (averaged over heads) and
    per block and head, in patches."""
    attention = attention_maps(transformer, sets.test[0][:ATTENTION_IMAGES], device)
    distance = mean_attention_distance(attention, transformer.grid)
    return {**feature_scores(transformer, sets, device),
            "attention_distance": distance.mean(axis=1).tolist(),
            "attention_distance_heads": distance.tolist()}


def budget_curve(run_dir: str | Path, sets: LabelledImages, device="cpu") -> list[dict]:
    """The frozen features along one pretraining run: `feature_scores` and the held-out
    position top-1 at every snapshot the run kept (snapshot_every), one row per epoch.
    Empty for a run without snapshots."""
    run_dir = Path(run_dir)
    position = {row["epoch"]: row.get("val_top1") for row in read_metrics(run_dir)}
    rows = []
    for epoch in sorted(int(p.stem.removeprefix("epoch"))
                        for p in run_dir.glob("snapshots/epoch*.pt")):
        model, _ = load_pretrained(snapshot_path(run_dir, epoch), device=device)
        rows.append({"epoch": epoch, "position_top1": position.get(epoch),
                     **feature_scores(model.transformer, sets, device)})
    return rows


def run_controls(profile: str, seed: int = 0, names=None, report=None, budget: str = "small",
                 **settings) -> list[dict]:
    """Pretrain every control at `budget` (finished runs are read back, so a rerun costs
    only the evaluation) and judge it; one row per control plus the random-init floor.
    names: a subset of `control_configs`' names. report(row) is called after each control."""
    every = control_configs(profile, seed, budget, **settings)
    unknown = sorted(set(names or ()) - set(every))
    if unknown:
        raise ValueError(f"unknown control(s) {unknown}; known: {list(every)}")
    configs = every if names is None else {name: every[name] for name in names}
    device = resolve_device(settings.get("device", "auto"))
    sets = labelled_sets(profile, seed, **settings)
    rows = []
    for name, config in configs.items():
        started = time.perf_counter()
        result = pretrain(config, resume="auto")
        model, _ = load_pretrained(result.checkpoint, device=device)
        judged = judge_features(model.transformer, sets, device)
        curve = {"budget_curve": budget_curve(result.run_dir, sets, device)} \
            if config.snapshot_every else {}
        rows.append({**_row(name, config, result), **judged, **curve,
                     "seconds": time.perf_counter() - started})
        if report is not None:
            report(rows[-1])
    base = next(iter(every.values()))
    torch.manual_seed(seed)  # the floor's weights: the seed's, as BENCHMARK's would be
    floor = build_pretrain_model(base).to(device)
    rows.append({"control": RANDOM_INIT, "grid": base.grid, "crop": base.crop,
                 "position_top1": None, "chance": 1 / base.num_tokens,
                 **judge_features(floor.transformer, sets, device)})
    return rows


def _row(name: str, config: PretrainConfig, result: RunResult) -> dict:
    last = result.metrics[-1]
    return {"control": name, "grid": config.grid, "crop": config.crop,
            "position_top1": last["val_top1"], "chance": 1 / config.num_tokens,
            "position_curve": [row["val_top1"] for row in result.metrics],
            "train_seconds": train_seconds(result.metrics),
            "run_dir": str(result.run_dir.resolve())}


def border_reliance(rows: list[dict], device="cpu", images: int = 500) -> list[dict]:
    """For every control of rows that differs only in K (and APL), the held-out position
    top-1 with the patches intact, with their outermost pixel ring blanked
    (`analysis.border_blanking`) and, the control, with as many pixels blanked inside the
    ring (`analysis.interior_blanking`), on up to `images` of its own held-out images. The
    border reliance is the ring's drop minus the interior's: what the borders are worth
    beyond losing that many pixels."""
    apl = rows[0]
    chosen = [row for row in rows
              if row.get("run_dir") and row["grid"] == apl["grid"]
              and (row is apl or row["control"].startswith("K ="))]
    table = []
    for row in sorted(chosen, key=lambda r: r["crop"]):
        model, config = load_pretrained(row["run_dir"], device=device)
        held_out = held_out_images(config)
        ring = border_blanking(model, held_out.images[:images], device=device)
        interior = interior_blanking(model, held_out.images[:images], seed=config.seed,
                                     device=device)
        ring_drop = ring["intact"] - ring["blanked"]
        interior_drop = interior["intact"] - interior["blanked"]
        table.append({"control": row["control"], "crop": row["crop"], **ring,
                      "drop": ring_drop, "interior_blanked": interior["blanked"],
                      "interior_drop": interior_drop, "reliance": ring_drop - interior_drop})
    return table


def by_name(rows: list[dict], name: str) -> dict:
    """The row of control `name` (a run's rows are looked up by name, never by place)."""
    found = [row for row in rows if row["control"] == name]
    if not found:
        raise KeyError(f"no control {name!r} in these rows; they have "
                       f"{[row['control'] for row in rows]}")
    return found[0]


def finetuned_transformers(finetune_rows: list[dict], methods=("APL fine-tune", "BENCHMARK"),
                           device="cpu") -> dict:
    """The transformers of notebook 04's runs of `methods` at its largest NPC, by method."""
    npc = max(row["npc"] for row in finetune_rows)
    return {row["method"]: load_finetuned(row["run_dir"], device)[0].transformer
            for row in finetune_rows if row["npc"] == npc and row["method"] in methods}


# ---------------------------------------------------------------- over seeds

def results_path(profile: str, budget: str = "small") -> Path:
    return RESULTS_DIR / f"{profile}_controls{'' if budget == 'small' else '_' + budget}.json"


def load_controls(profile: str, budget: str = "small", required: bool = False) -> dict | None:
    """The committed controls over seeds at `budget` (experiments/controls_seeds.py), None if
    there are none for `profile`, or an error naming the command that makes them (required)."""
    rerun = f"python experiments/controls_seeds.py --profile {profile} --budget {budget}"
    path = results_path(profile, budget)
    results = load_results(path, "controls over seeds",
                           {"profile", "machine", "command", "seeds"}, rerun)
    if results is None and required:
        raise FileNotFoundError(f"{path} does not exist: restore it with git checkout, or "
                                f"rerun {rerun}")
    return results


def floor(results: dict) -> dict[str, float]:
    """The random-init floor's kNN and probe top-1, averaged over the seeds of `results`."""
    rows = rows_by_control(results).get(RANDOM_INIT, [])
    if not rows:
        raise ValueError("these results have no random-init rows to take the floor from")
    return {key: statistics.mean(r[key] for r in rows) for key in ("knn_top1", "probe_top1")}


def rows_by_control(results: dict) -> dict[str, list[dict]]:
    """Every seed's row of each control, in the order the controls ran, with its seed."""
    rows: dict[str, list[dict]] = {}
    for seed in results["seeds"]:
        for row in seed["rows"]:
            rows.setdefault(row["control"], []).append({**row, "seed": seed["seed"]})
    return rows
