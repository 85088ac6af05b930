"""Notebook 06's tables of the controls (apl_core.controls runs them): one run's, and those
over the committed seeds.

    configs_table   what each control pretrains: its grid, crop, tokens and its one change
    run_table, grid_table, scaling_table
                    one run of the controls: every control against its chance, the grid
                    controls by G, and the two attention scalings
    control_table, verdict_table, border_table
                    over seeds: each measure's mean and spread, each control's paired
                    difference from APL with its verdict, and what the border ring is worth
"""
from __future__ import annotations

import statistics

from .config import PretrainConfig
from .controls import by_name, rows_by_control
from .stats import detectable_difference, mean_sd, verdict


def configs_table(configs: dict[str, PretrainConfig]) -> list[dict]:
    """What each control pretrains: grid, crop, tokens, token size, its one change, budget."""
    return [{"control": name, "G": c.grid, "K": c.crop, "tokens T": c.num_tokens,
             "D": c.token_dim, "positional embedding": c.positional_embedding,
             "attention scale": c.attention_scale,
             "images x epochs": f"{c.num_images - c.holdout_images:,} x {c.epochs}"}
            for name, c in configs.items()]


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def run_table(rows: list[dict]) -> list[dict]:
    """One run of the controls (%): the puzzle against its chance, the frozen features' kNN
    and probe, and the penalty the probe chose on validation."""
    return [{"control": r["control"], "G": r["grid"], "K": r["crop"],
             "position top-1": _percent(r["position_top1"]), "chance": _percent(r["chance"]),
             "kNN top-1": _percent(r["knn_top1"]), "probe top-1": _percent(r["probe_top1"]),
             "probe L2 penalty": f"{r['probe_penalty']:g}"} for r in rows]


def grid_table(rows: list[dict], crop: int) -> list[dict]:
    """The grid controls and APL at crop `crop`, by G (%): harder puzzles have more
    positions, so the position top-1 is shown against its chance too."""
    grids = sorted((r for r in rows if r["crop"] == crop and r["position_top1"] is not None
                    and r["control"] not in ("positional leak", "original scaling")),
                   key=lambda r: r["grid"])
    return [{"G": r["grid"], "tokens T": r["grid"] ** 2,
             "position top-1": _percent(r["position_top1"]),
             "x chance": f"{r['position_top1'] / r['chance']:.1f}",
             "kNN top-1": _percent(r["knn_top1"]), "probe top-1": _percent(r["probe_top1"])}
            for r in grids]


def scaling_table(rows: list[dict], apl_name: str) -> list[dict]:
    """APL's standard attention scaling against the original's (%)."""
    return [{"attention": label, "position top-1": _percent(r["position_top1"]),
             "kNN top-1": _percent(r["knn_top1"]), "probe top-1": _percent(r["probe_top1"])}
            for label, r in (("standard, 1/sqrt(D/H)", by_name(rows, apl_name)),
                             ("original, q k v / D^(1/4)", by_name(rows, "original scaling")))]



def control_table(results: dict) -> list[dict]:
    """Per control, the mean ± standard deviation over seeds (%) of the held-out position
    top-1, the kNN and the linear probe's top-1."""
    table = []
    for control, rows in rows_by_control(results).items():
        positions = [r["position_top1"] for r in rows if r["position_top1"] is not None]
        table.append({"control": control, "seeds": len(rows),
                      "position top-1": mean_sd(positions) if positions else "–",
                      "chance": f"{100 * rows[0]['chance']:.1f}",
                      "kNN top-1": mean_sd([r["knn_top1"] for r in rows]),
                      "probe top-1": mean_sd([r["probe_top1"] for r in rows])})
    return table


def verdict_table(results: dict, test_images: int) -> list[dict]:
    """Per control and measure (kNN, probe): its paired difference from APL on every seed
    (percentage points), the smallest difference these seeds and `test_images` test images
    can show (`stats.detectable_difference`), and the verdict (`stats.verdict`): a control is
    better or worse than APL only beyond that and on every seed."""
    by_control = rows_by_control(results)
    apl_name = next(iter(by_control))
    apl = {row["seed"]: row for row in by_control[apl_name]}
    table = []
    for control, rows in by_control.items():
        if control == apl_name:
            continue
        for key, label in (("knn_top1", "kNN"), ("probe_top1", "probe")):
            differences = [r[key] - apl[r["seed"]][key] for r in rows]
            level = statistics.mean([r[key] for r in rows] + [apl[r["seed"]][key] for r in rows])
            table.append({
                "control": control, "measure": label,
                "− APL, per seed": ", ".join(f"{100 * d:+.1f}" for d in differences),
                "detectable": f"{100 * detectable_difference(differences, level, test_images):.1f}",
                "verdict": {"higher": "above APL", "lower": "below APL"}.get(
                    verdict(differences, level, test_images), "no detectable difference")})
    return table



def border_table(results: dict) -> list[dict]:
    """Per K control, the position top-1 lost when the border ring is blanked, per seed and
    on average (percentage points), and where the rows have the control (as many pixels
    blanked inside the ring), its drop and the border reliance (the ring's drop minus the
    control's), per seed and on average. `results`: {"seeds": [{"borders": rows}, ...]},
    the committed seeds or one live run."""
    drops: dict[str, list[dict]] = {}
    for seed in results["seeds"]:
        for row in seed.get("borders", []):
            drops.setdefault(row["control"], []).append(row)
    table = []
    for control, rows in drops.items():
        entry = {"control": control, "K": rows[0]["crop"],
                 "intact": mean_sd([r["intact"] for r in rows]),
                 "ring blanked": mean_sd([r["blanked"] for r in rows]),
                 "drop, per seed": ", ".join(f"{100 * r['drop']:.1f}" for r in rows),
                 "drop mean": f"{100 * statistics.mean(r['drop'] for r in rows):.1f}"}
        if all("reliance" in r for r in rows):
            control_drop = statistics.mean(r["interior_drop"] for r in rows)
            entry.update({
                "control's drop mean": f"{100 * control_drop:.1f}",
                "reliance, per seed": ", ".join(f"{100 * r['reliance']:+.1f}" for r in rows),
                "reliance mean": f"{100 * statistics.mean(r['reliance'] for r in rows):+.1f}"})
        table.append(entry)
    return table
