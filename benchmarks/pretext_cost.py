"""What each pretext task costs to train on this machine: the images per second of its
training step, every task in one run, interleaved round by round so that a noisy machine
disturbs every task alike, and the seconds one epoch of the profile's pretraining takes at
that rate.

    python benchmarks/pretext_cost.py --profile quick

Each task trains as its pretraining does (apl_core.pretext_study.study_pretraining: its model,
loss, optimizer and precision), through the engine's own `train_one_epoch` over a
`BatchLoader` of random uint8 images with the pretraining's augmentation: the whole path from
the images to the optimizer step. A warm-up pass per task first; then each round times one
pass of --steps batches per task. Evaluation, checkpoints and logging are left out. The
pretext study's own runs record their epoch times too, but they shared the CPU with other
studies: the cost the course reports is this one, measured with nothing else running.

Writes apl_core/results/<profile>_pretext_cost.json (--out), which notebook 07 and
docs/results.md read.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apl_core.augment import AugmentSpec  # noqa: E402
from apl_core.config import PROFILES  # noqa: E402
from apl_core.data import BatchLoader, ImageSet, pretraining_images  # noqa: E402
from apl_core.device import autocast_dtype, resolve_device  # noqa: E402
from apl_core.distributed import DistContext  # noqa: E402
from apl_core.pretext import build_pretext_model, pretext_loss  # noqa: E402
from apl_core.pretext_study import TASKS, cost_path, study_pretraining  # noqa: E402
from apl_core.results import how_it_ran, write_results  # noqa: E402
from apl_core.train import Runtime, make_trainer, train_one_epoch  # noqa: E402


class TaskStep:
    """One task's training as its pretraining runs it, over a fixed loader of `images`."""

    def __init__(self, profile: str, task: str, images: torch.Tensor, device: torch.device):
        self.config = study_pretraining(profile, task, seed=0, device=str(device))
        dtype = autocast_dtype(self.config.precision, device)
        torch.manual_seed(0)
        model = build_pretext_model(self.config).to(device)
        self.trainer = make_trainer(model, pretext_loss(task), self.config,
                                    Runtime(device, dtype, DistContext()))
        self.loader = BatchLoader(ImageSet(images, None, []), self.config.batch_size,
                                  shuffle=True, drop_last=True, device=device,
                                  augment=AugmentSpec(scale=(self.config.crop_scale, 1.0)),
                                  seed=0)
        self.images = len(self.loader) * self.config.batch_size
        self.passes = 0

    def images_per_second(self) -> float:
        """One timed pass over the loader."""
        start = time.perf_counter()
        train_one_epoch(self.trainer, self.loader, self.passes, self.config)
        if self.trainer.rt.device.type == "cuda":
            torch.cuda.synchronize()
        self.passes += 1
        return self.images / (time.perf_counter() - start)


def measure(profile: str, tasks, steps: int, rounds: int, device: torch.device) -> list[dict]:
    """Each task's images/s (median and range over `rounds` interleaved passes of `steps`
    batches), the seconds of one pretraining epoch at the median rate, and its ratio to
    APL's."""
    pretraining = study_pretraining(profile, "apl", 0)  # every task's images and batch
    size, batch = pretraining.image_size, pretraining.batch_size
    images = torch.randint(0, 256, (steps * batch, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    runs = {task: TaskStep(profile, task, images, device) for task in tasks}
    for run in runs.values():
        run.images_per_second()  # warm-up
    rates = {task: [] for task in tasks}
    for _ in range(rounds):
        for task, run in runs.items():
            rates[task].append(run.images_per_second())
    trained_on, _ = pretraining_images(pretraining)
    epoch_images = len(trained_on) // batch * batch  # the pretraining drops the last batch
    rows = []
    for task, run in runs.items():
        median = statistics.median(rates[task])
        rows.append({"task": task, "images_per_s": median,
                     "images_per_s_range": [min(rates[task]), max(rates[task])],
                     "epoch_images": epoch_images, "epoch_seconds": epoch_images / median})
    apl = next((row["epoch_seconds"] for row in rows if row["task"] == "apl"), None)
    for row in rows:
        row["relative_to_apl"] = row["epoch_seconds"] / apl if apl else None
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", choices=list(PROFILES),
                        help="the profile whose pretraining each task takes (default: quick)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS,
                        metavar="TASK", help=f"the tasks (default: all of {', '.join(TASKS)})")
    parser.add_argument("--steps", type=int, default=10,
                        help="batches per timed pass (default: 10)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="timed passes per task, interleaved (default: 5)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--out", default="", help="the results file (default: apl_core/"
                        "results/<profile>_pretext_cost.json)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        parser.error(f"--steps {args.steps} --rounds {args.rounds}: give 1 or more of each")
    device = resolve_device(args.device)
    rows = measure(args.profile, args.tasks, args.steps, args.rounds, device)
    results = {"profile": args.profile,
               **how_it_ran("benchmarks/pretext_cost.py", argv, str(device)),
               "steps": args.steps, "rounds": args.rounds, "tasks": rows}
    out = Path(args.out) if args.out else cost_path(args.profile)
    write_results(out, results)
    for row in rows:
        relative = (f", {row['relative_to_apl']:.2f}x APL's"
                    if row["relative_to_apl"] is not None else "")
        print(f"{row['task']:<9} {row['images_per_s']:7.1f} images/s "
              f"({row['images_per_s_range'][0]:.1f}-{row['images_per_s_range'][1]:.1f}): "
              f"{row['epoch_seconds']:6.1f} s per epoch of {row['epoch_images']:,} images"
              f"{relative}")
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
