"""Training throughput of the APL model against the original's training step and data path,
with the matmul ceiling.

    python benchmarks/throughput.py                        # CPU, the paper model, batch 64
    python benchmarks/throughput.py --device cuda          # GPU: batch 1024, bf16, projection
    python benchmarks/throughput.py --precision fp32,bf16 --compile   # compare options
    python benchmarks/throughput.py --profile --phases pretrain --no-epoch   # where time goes
    python benchmarks/throughput.py --config quick --steps 20

For pretraining and fine-tuning it measures, in one run and interleaved round by round (so
that a noisy machine disturbs every variant alike):

- the training step of our model (forward, loss on the kept tokens, backward, Adam step,
  zero_grad), through the training engine's own `apl_core.train.train_one_epoch`, with its
  optimizer and loss scaler (`make_trainer`), loss functions and autocast choice;
- the original's training step (benchmarks/naive_model.py) with the same weights: separate
  q/k/v layers, q and k each divided by D^(1/4), explicit softmax with `.contiguous()` copies,
  the PatchDropout mask drawn on the CPU, fp16 autocast with a GradScaler on CUDA (fp32 on a
  CPU, where the original has no mixed precision), Adam, `.item()` logging every step;
- one large square matrix product per precision used (the machine's ceiling);

and reports images/s (median of the timed steps, and the spread), model FLOPs per image
(forward + backward, counted with FlopCounterMode), achieved GFLOP/s, the ceiling in GFLOP/s
and their ratio (MFU), and the ratio of our step to the original's. With --compile it adds
the torch.compile'd step, its compile time and after how many steps it pays back.

The epoch measurement runs `train_one_epoch` over a `BatchLoader` of random uint8 images
(images -> device -> batched augmentation -> patchify -> step), so its images/s includes the
data path; from it the script projects a 300-epoch pretraining on 100,000 images (STL-10
unlabeled), evaluation and checkpoints excluded. Next to it runs the original's path on the
same images: a DataLoader whose N workers turn each image into a PIL image, augment it with
per-image torchvision transforms and patchify it (N = 4 as published, and N = this machine's
cores), alone and feeding the original's step; the ratios compare the data paths and the
whole paths.

--profile records a few of our pretraining steps with torch.profiler (top ops by self time,
the share of the step in matrix products and in attention, on a GPU its idle share) and times
the model's own matrix products (M = batch x tokens rows; the q/k/v, output and
feed-forward projections) next to the ceiling.

Writes everything to --json (default benchmarks/results/throughput.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from naive_model import (NaiveClassifier, NaivePretrainModel, OriginalDataset,  # noqa: E402
                         from_fast, naive_kwargs, original_finetune_step,
                         original_pretrain_step, original_scaler)
from padded_heads import pad_heads  # noqa: E402

from apl_core import train as engine  # noqa: E402
from apl_core.augment import AugmentSpec  # noqa: E402
from apl_core.config import profile_config  # noqa: E402
from apl_core.data import BatchLoader, ImageSet  # noqa: E402
from apl_core.device import autocast_dtype, cpu_name, resolve_device  # noqa: E402
from apl_core.distributed import DistContext  # noqa: E402
from apl_core.model import build_classifier, build_pretrain_model  # noqa: E402
from apl_core.objective import class_loss, position_loss  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "throughput.json"
STL10_UNLABELED, PAPER_EPOCHS = 100_000, 300
DATA_PASSES = 3  # timed passes over the epoch images when a data path runs alone
ARCH_OPTIONS = ("image_size", "grid", "crop", "blocks", "heads", "hidden_mult")


# ---------------------------------------------------------------- timing helpers

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def spread(times: list[float]) -> dict:
    ordered = sorted(times)
    q1, q3 = (statistics.quantiles(ordered, n=4)[i] for i in (0, 2)) if len(ordered) > 1 \
        else (ordered[0], ordered[0])
    return {"median_s": statistics.median(ordered), "min_s": ordered[0], "max_s": ordered[-1],
            "q1_s": q1, "q3_s": q3, "count": len(ordered)}


# ---------------------------------------------------------------- FLOPs

def _sdpa_cpu_forward(query, key, value, *args, out_shape=None, **kwargs):
    return flop_counter.sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode knows the CUDA attention kernels but not the CPU flash kernel.
CUSTOM_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_forward,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
}


def flops_per_image(model: torch.nn.Module, loss_of_batch, images: torch.Tensor) -> int:
    """Model FLOPs of one training forward + backward, per image (matmuls and attention:
    what FlopCounterMode counts; elementwise work and the optimizer are not counted)."""
    model.train()
    with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
        loss_of_batch(model, images).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() // images.shape[0]


# ---------------------------------------------------------------- matrix products

class Matmul:
    """F.linear(a (M, K), b (N, K)) in the precision the model computes in, through the same
    op and dispatch (F.linear under autocast) as the model's linear layers: on a CPU without
    native bf16, torch.mm of two bf16 matrices takes a far slower path than F.linear (about
    1 against 7 GFLOP/s there), so the op matters. One product runs per round."""

    def __init__(self, device, dtype, m, k, n):
        self.device, self.dtype, self.shape = device, dtype, (m, k, n)
        generator = torch.Generator().manual_seed(0)
        self.a = torch.randn(m, k, generator=generator).to(device)
        self.b = torch.randn(n, k, generator=generator).to(device)
        self.times: list[float] = []

    def run(self) -> float:
        sync(self.device)
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            F.linear(self.a, self.b)
        sync(self.device)
        return time.perf_counter() - start

    def round(self) -> None:
        self.times.append(self.run())

    def result(self, since: int = 0) -> dict:
        """The products timed from round `since` on."""
        m, k, n = self.shape
        s = spread(self.times[since:])
        return {"m": m, "k": k, "n": n, "dtype": dtype_name(self.dtype),
                "gflops": 2 * m * k * n / s["median_s"] / 1e9,
                "gflops_best": 2 * m * k * n / s["min_s"] / 1e9, **s}


def ceiling(device, dtype, sizes, max_s=1.0) -> Matmul:
    """The machine's ceiling: a square product, the largest of `sizes` up to the first one
    that takes over `max_s` (calibrated once)."""
    for n in sizes:
        product = Matmul(device, dtype, n, n, n)
        seconds = product.run()
        product.run()
        if seconds > max_s:
            break
    return product


# ---------------------------------------------------------------- the steps we time

class RepeatLoader:
    """A loader that yields the same batch `steps` times and times each step: from the
    moment the batch is handed out to the moment the next one is asked for, i.e. exactly
    one iteration of train_one_epoch's loop (with a device sync at both ends)."""

    def __init__(self, images, labels, steps, device, times):
        self.images, self.labels, self.steps = images, labels, steps
        self.device, self.times = device, times

    def __len__(self):
        return self.steps

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        for _ in range(self.steps):
            sync(self.device)
            start = time.perf_counter()
            yield self.images, self.labels
            sync(self.device)
            self.times.append(time.perf_counter() - start)


class OurStep:
    """Our model trained by the engine's train_one_epoch, with its optimizer and losses."""

    def __init__(self, model, phase, config, device, dtype, compile_model=False):
        self.model, self.config, self.device, self.dtype = model, config, device, dtype
        self.trainer = engine.make_trainer(
            model, position_loss if phase == "pretrain" else class_loss, config,
            engine.Runtime(device, dtype, DistContext()),
            torch.compile(model) if compile_model else model)
        self.times: list[float] = []
        self.epoch = 0

    def run(self, images, labels, steps=1, record=True):
        times = self.times if record else []
        loader = RepeatLoader(images, labels, steps, self.device, times)
        self.run_loader(loader)
        return times[-steps:]

    def run_loader(self, loader):
        result = engine.train_one_epoch(self.trainer, loader, self.epoch, self.config)
        self.epoch += 1
        return result


class OriginalStep:
    """The original's step (benchmarks/naive_model.py): Adam with the phase's learning rate
    and weight decay, fp16 + GradScaler on CUDA, fp32 on a CPU."""

    def __init__(self, model, phase, config, device):
        self.model, self.phase, self.device = model.train(), phase, device
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr,
                                          weight_decay=config.weight_decay)
        self.scaler = original_scaler(device)
        self.precision = "fp16" if self.scaler.is_enabled() else "fp32"
        self.times: list[float] = []

    def step(self, batch, labels) -> None:
        if self.phase == "pretrain":
            original_pretrain_step(self.model, self.optimizer, self.scaler, batch)
        else:
            original_finetune_step(self.model, self.optimizer, self.scaler, batch, labels)

    def run(self, images, labels, steps=1, record=True):
        for _ in range(steps):
            sync(self.device)
            start = time.perf_counter()
            self.step(images, labels)
            sync(self.device)
            if record:
                self.times.append(time.perf_counter() - start)


def original_model(phase, pre, ft, ours, attention):
    """The original's model for `phase` with the weights of `ours` (on the CPU)."""
    kwargs = naive_kwargs(pre)
    if phase == "finetune":
        kwargs.update(dropout=ft.dropout, patch_dropout=ft.patch_dropout,
                      num_classes=ft.num_classes)
    cls = NaivePretrainModel if phase == "pretrain" else NaiveClassifier
    return from_fast(cls(**kwargs, attention=attention, scale="original"), ours)


# ---------------------------------------------------------------- configuration

def build_configs(args, device):
    overrides = {name: getattr(args, name) for name in ARCH_OPTIONS
                 if getattr(args, name) is not None}
    common = dict(device=device.type, batch_size=args.batch_size)
    pre = profile_config(args.config, "pretrain", **common, **overrides)
    ft_overrides = {"image_size": pre.image_size} if "image_size" in overrides else {}
    ft = profile_config(args.config, "finetune", **common, **ft_overrides)
    return pre, ft


def dtype_name(dtype) -> str:
    return "fp32" if dtype is None else {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def original_dtype(device):
    return torch.float16 if original_scaler(device).is_enabled() else None


def head_multiples(spec: str) -> list[int]:
    return list(dict.fromkeys(int(part) for part in spec.split(",")))


def worker_counts(spec: str) -> list[int]:
    """'4,cores' -> [4, os.cpu_count()], without repeats."""
    counts = []
    for part in spec.split(","):
        count = os.cpu_count() if part.strip() == "cores" else int(part)
        if count not in counts:
            counts.append(count)
    return counts


# ---------------------------------------------------------------- the measurements

def measure_phase(phase, pre, ft, args, device, dtypes, ceilings, report):
    """Interleaved rounds: one ceiling product per precision, then one step of every
    variant. Returns the rows of the table."""
    torch.manual_seed(0)
    b, n = args.batch_size, pre.image_size
    images = torch.rand(b, 3, n, n, device=device) * 2 - 1
    labels = torch.randint(0, ft.num_classes, (b,), device=device)
    config = pre if phase == "pretrain" else ft

    def fresh_model(head_multiple=1):
        torch.manual_seed(0)
        model = build_pretrain_model(pre) if phase == "pretrain" else build_classifier(ft, pre)
        if head_multiple > 1:
            pad_heads(model, head_multiple)
        return model.to(device)

    def loss_of_batch(model, x):
        if phase == "pretrain":
            logits, keep = model(x)
            targets = torch.arange(keep.shape[1], device=x.device).expand_as(keep)
            return F.cross_entropy(logits[keep], targets[keep])
        return F.cross_entropy(model(x), labels)

    ours = {f"ours {dtype_name(dtype)}{f' head-pad {m}' if m > 1 else ''}": (dtype, m)
            for dtype in dtypes for m in head_multiples(args.head_multiple)}
    variants = {name: OurStep(fresh_model(m), phase, config, device, dtype)
                for name, (dtype, m) in ours.items()}
    compile_info = {}
    if args.compile:
        for eager_name, (dtype, m) in ours.items():
            name = f"{eager_name} compiled"
            step = OurStep(fresh_model(m), phase, config, device, dtype, compile_model=True)
            start = time.perf_counter()
            first = step.run(images, labels, 1, record=False)
            compile_info[name] = {"first_step_s": first[0],
                                  "first_step_wall_s": time.perf_counter() - start}
            variants[name] = step
    original = None
    if not args.no_original:
        model = original_model(phase, pre, ft, fresh_model().cpu(), args.original_attention)
        original = OriginalStep(model.to(device), phase, config, device)
        variants[f"original {original.precision}"] = original

    # the unpadded model's FLOPs for every variant: padded heads add no useful work
    flops = flops_per_image(fresh_model(), loss_of_batch, images)
    original_flops = flops_per_image(original.model, loss_of_batch, images) if original else None

    for step in variants.values():  # warm-up (compiled: after its first, compiling step)
        step.run(images, labels, args.warmup, record=False)
    first_round = {name: len(product.times) for name, product in ceilings.items()}
    for _ in range(args.steps):
        for product in ceilings.values():
            product.round()
        for step in variants.values():
            step.run(images, labels, 1)

    rows = []
    original_median = spread(original.times)["median_s"] if original else None
    for name, step in variants.items():
        s = spread(step.times)
        precision = name.split()[1]
        ceiling_gflops = (ceilings[precision].result(first_round[precision])["gflops"]
                          if precision in ceilings else None)  # this phase's rounds
        achieved = flops * b / s["median_s"] / 1e9
        row = {"phase": phase, "variant": name, "batch_size": b,
               "images_per_s": b / s["median_s"],
               "images_per_s_range": [b / s["max_s"], b / s["min_s"]],
               "step": s, "flops_per_image": flops, "achieved_gflops": achieved,
               "ceiling_gflops": ceiling_gflops,
               "mfu": achieved / ceiling_gflops if ceiling_gflops else None,
               "speedup_vs_original": original_median / s["median_s"] if original else None}
        if name in compile_info:
            eager = spread(variants[name.replace(" compiled", "")].times)["median_s"]
            overhead = compile_info[name]["first_step_s"] - s["median_s"]
            gain = eager - s["median_s"]
            steps_per_epoch = STL10_UNLABELED // b if args.config == "paper" else \
                max(1, (pre.num_images or STL10_UNLABELED) // b)
            row["compile"] = {
                **compile_info[name], "compile_overhead_s": overhead,
                "gain_per_step_s": gain,
                "pays_back_after_steps": overhead / gain if gain > 0 else None,
                "pays_back_after_epochs": overhead / gain / steps_per_epoch if gain > 0 else None,
            }
        rows.append(row)
    report["flops"][phase] = {"ours_per_image": flops, "original_per_image": original_flops}
    return rows


def epoch_images(pre, args, device) -> torch.Tensor:
    """The random uint8 images both epoch measurements go through."""
    b = args.batch_size
    count = args.epoch_images or b * (8 if device.type == "cpu" else 40)
    count = max(b, count // b * b)
    generator = torch.Generator().manual_seed(0)
    n = pre.image_size
    return torch.randint(0, 256, (count, 3, n, n), dtype=torch.uint8, generator=generator)


def data_path_speed(loader, count: int, device) -> float:
    """Images/s of iterating `loader` (`count` images a pass) alone: one warm-up pass, then
    DATA_PASSES timed passes. Both data paths are timed by this, so alike."""
    for _ in loader:
        pass
    sync(device)
    start = time.perf_counter()
    for _ in range(DATA_PASSES):
        for _ in loader:
            pass
    sync(device)
    return DATA_PASSES * count / (time.perf_counter() - start)


def measure_epoch(pre, args, device, dtype, images, report):
    """train_one_epoch over a BatchLoader of uint8 images with the pretraining augmentation:
    the whole path from uint8 images to the optimizer step."""
    count = len(images)
    loader = BatchLoader(ImageSet(images, None, []), args.batch_size, shuffle=True,
                         drop_last=True, device=device,
                         augment=AugmentSpec(scale=(pre.crop_scale, 1.0)), seed=0)
    # the data path alone: uint8 -> device -> augment (patchify runs inside the model)
    data_images_per_s = data_path_speed(loader, count, device)
    torch.manual_seed(0)
    step = OurStep(build_pretrain_model(pre).to(device), "pretrain", pre, device, dtype,
                   compile_model=args.compile)
    step.run_loader(loader)  # warm-up epoch (and compilation)
    sync(device)
    start = time.perf_counter()
    step.run_loader(loader)
    sync(device)
    seconds = time.perf_counter() - start
    images_per_s = count / seconds
    report["epoch"] = {
        "images": count, "batch_size": args.batch_size, "precision": dtype_name(dtype),
        "compiled": args.compile, "epoch_s": seconds, "images_per_s": images_per_s,
        "data_path_images_per_s": data_images_per_s,
        "projected_300_epochs_stl10_s": PAPER_EPOCHS * STL10_UNLABELED / images_per_s,
        "note": "train_one_epoch over BatchLoader(augment=AugmentSpec()); evaluation, "
                "checkpoints and logging of the real run are not included",
    }


def measure_original_path(pre, args, device, images, report):
    """The original's data path on the same images, for each worker count: the DataLoader
    alone, then feeding the original's pretraining step. The workers start once, before the
    timing: the original starts them every epoch, but over 100,000 images that is negligible
    where over the few batches timed here it would dominate."""
    b = args.batch_size
    dataset = OriginalDataset(images, pre.grid, pre.crop, (pre.crop_scale, 1.0))
    # more workers than cores (4 as published, also on fewer cores) is the point here
    warnings.filterwarnings("ignore", "This DataLoader will create")
    rows = []
    for workers in worker_counts(args.workers):
        loader = torch.utils.data.DataLoader(dataset, b, shuffle=True, drop_last=True,
                                             num_workers=workers, persistent_workers=True)
        count = len(loader) * b
        data_images_per_s = data_path_speed(loader, count, device)  # its warm-up starts them
        torch.manual_seed(0)
        model = original_model("pretrain", pre, None, build_pretrain_model(pre),
                               args.original_attention)
        step = OriginalStep(model.to(device), "pretrain", pre, device)
        step.step(torch.randn(b, pre.num_tokens, pre.token_dim, device=device), None)  # warm-up
        sync(device)
        start = time.perf_counter()
        for tokens in loader:
            step.step(tokens.to(device), None)
        sync(device)
        rows.append({"workers": workers, "data_images_per_s": data_images_per_s,
                     "path_images_per_s": count / (time.perf_counter() - start)})
    report["original_path"] = {
        "images": count, "batch_size": b, "precision": step.precision, "rows": rows,
        "note": "DataLoader(OriginalDataset) with N workers: PIL image, per-image torchvision "
                "transforms and patchify per sample; alone, then feeding the original's step"}


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def profile_step(pre, args, device, dtype, report):
    """torch.profiler over --profile-steps of our pretraining step (after the warm-up): the
    top ops (on a GPU: kernels) by self time, and the shares of the step spent in matrix
    products, in attention and, on a GPU, with the GPU idle."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    torch.manual_seed(0)
    b, n, steps = args.batch_size, pre.image_size, args.profile_steps
    images = torch.rand(b, 3, n, n, device=device) * 2 - 1
    step = OurStep(build_pretrain_model(pre).to(device), "pretrain", pre, device, dtype,
                   compile_model=args.compile)
    step.run(images, None, args.warmup + 1, record=False)
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as profiler:
        wall_us = sum(step.run(images, None, steps, record=False)) * 1e6
    events = profiler.key_averages()
    if on_gpu:  # the kernels, on the GPU's clock
        leaves = [e for e in events
                  if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
        self_us = lambda e: e.self_device_time_total  # noqa: E731
        total_us = lambda e: e.device_time_total  # noqa: E731
    else:  # the ops the main thread ran (intra-op threads work inside them)
        leaves = list(events)
        self_us = lambda e: e.self_cpu_time_total  # noqa: E731
        total_us = lambda e: e.cpu_time_total  # noqa: E731
    top = sorted(leaves, key=self_us, reverse=True)[:args.profile_top]
    report["profile"] = {
        "steps": steps, "batch_size": b, "precision": dtype_name(dtype),
        "compiled": args.compile, "step_ms": wall_us / 1e3 / steps,
        "clock": "GPU kernel time" if on_gpu else "CPU time of the ops",
        "top": [{"name": e.key, "self_ms_per_step": self_us(e) / 1e3 / steps,
                 "share": self_us(e) / wall_us, "calls_per_step": e.count / steps}
                for e in top],
        "matmul_share": sum(total_us(e) for e in events if e.key in MATMUL_OPS) / wall_us,
        "attention_share": sum(total_us(e) for e in events
                               if e.key.startswith("aten::_scaled_dot_product")) / wall_us,
        # GPU: 1 - the idle share; CPU: the rest is Python and dispatch between the ops
        "busy_share": sum(self_us(e) for e in leaves) / wall_us,
    }


def measure_model_matmuls(pre, args, device, dtype, ceilings, report):
    """Our model's forward matrix products at their own shapes (M = batch x tokens rows),
    interleaved with the ceiling in the same precision."""
    m, d = args.batch_size * pre.num_tokens, pre.token_dim
    hidden = pre.hidden_mult * d
    shapes = {}
    for name, (k, n) in (("q/k/v projection", (d, 3 * d)), ("output projection", (d, d)),
                         ("feed-forward in", (d, hidden)), ("feed-forward out", (hidden, d))):
        shapes[(k, n)] = f"{shapes[(k, n)]}, {name}" if (k, n) in shapes else name
    products = {name: Matmul(device, dtype, m, k, n) for (k, n), name in shapes.items()}
    top = ceilings[dtype_name(dtype)]
    for product in (*products.values(), top):
        product.run()  # warm-up
    for _ in range(args.steps):
        top.round()
        for product in products.values():
            product.round()
    ceiling_gflops = top.result()["gflops"]
    report["model_matmuls"] = [
        {"layers": name, **product.result(),
         "share_of_ceiling": product.result()["gflops"] / ceiling_gflops}
        for name, product in products.items()]


# ---------------------------------------------------------------- output

def machine(device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(),
            "device": device.type, "threads": torch.get_num_threads(),
            "cores": os.cpu_count(), "cpu": cpu_name(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return info


def print_table(report) -> None:
    m = report["machine"]
    print(f"\n{m.get('gpu', m['cpu'])} | torch {m['torch']} | {m['threads']} threads | "
          f"step: apl_core.train.train_one_epoch")
    header = (f"{'phase':9} {'variant':30} {'img/s':>8} {'range':>13} {'GFLOP/img':>9} "
              f"{'GFLOP/s':>8} {'ceiling':>8} {'MFU':>6} {'vs original':>11}")
    if report["rows"]:
        print(header)
        print("-" * len(header))
    for row in report["rows"]:
        low, high = row["images_per_s_range"]
        ceiling_gflops = f"{row['ceiling_gflops']:.0f}" if row["ceiling_gflops"] else "-"
        mfu = f"{100 * row['mfu']:.0f}%" if row["mfu"] is not None else "-"
        speed = f"{row['speedup_vs_original']:.2f}x" if row["speedup_vs_original"] else "-"
        print(f"{row['phase']:9} {row['variant']:30} {row['images_per_s']:8.1f} "
              f"{low:6.1f}-{high:<6.1f} {row['flops_per_image'] / 1e9:9.3f} "
              f"{row['achieved_gflops']:8.1f} {ceiling_gflops:>8} {mfu:>6} {speed:>11}")
        if "compile" in row:
            c = row["compile"]
            back = (f"pays back after {c['pays_back_after_steps']:.0f} steps "
                    f"({c['pays_back_after_epochs']:.2f} epochs)"
                    if c["pays_back_after_steps"] else "never pays back (not faster)")
            print(f"{'':9} {'':30} compile: first step {c['first_step_s']:.1f}s, {back}")
    for name, c in report.get("ceilings", {}).items():
        print(f"ceiling {name}: {c['n']}x{c['n']} matmul, {c['gflops']:.1f} GFLOP/s median "
              f"({c['gflops_best']:.1f} best)")
    epoch = report.get("epoch")
    if epoch:
        minutes = epoch["projected_300_epochs_stl10_s"] / 60
        print(f"\nepoch (augment + step, {epoch['images']} images, {epoch['precision']}"
              f"{', compiled' if epoch['compiled'] else ''}): {epoch['images_per_s']:.1f} img/s; "
              f"data path alone {epoch['data_path_images_per_s']:.0f} img/s; projected 300 "
              f"epochs x 100,000 images: {minutes:.1f} min "
              f"(issue 6's GPU target: under 15 min: {'met' if minutes < 15 else 'not met'})")
    path = report.get("original_path")
    if path:
        print(f"original path (DataLoader, PIL + torchvision per image, {path['images']} "
              f"images, step in {path['precision']}):")
        for row in path["rows"]:
            line = (f"  {row['workers']:2d} workers: data alone {row['data_images_per_s']:6.0f} "
                    f"img/s, with the step {row['path_images_per_s']:6.1f} img/s")
            if epoch:
                data = epoch["data_path_images_per_s"] / row["data_images_per_s"]
                whole = epoch["images_per_s"] / row["path_images_per_s"]
                line += f"; ours/original: data {data:.1f}x, whole path {whole:.2f}x"
            print(line)
    profile = report.get("profile")
    if profile:
        shares = {name: f"{100 * profile[name + '_share']:.0f}%"
                  for name in ("matmul", "attention", "busy")}
        print(f"\nprofile: {profile['steps']} pretraining steps, batch {profile['batch_size']}, "
              f"{profile['precision']}{', compiled' if profile['compiled'] else ''}: "
              f"{profile['step_ms']:.0f} ms/step; matrix products {shares['matmul']}, "
              f"attention {shares['attention']}, {profile['clock']} {shares['busy']} of the step")
        print(f"  {'self ms/step':>12} {'share':>6} {'calls':>6}  op")
        for row in profile["top"]:
            print(f"  {row['self_ms_per_step']:12.1f} {100 * row['share']:5.1f}% "
                  f"{row['calls_per_step']:6.0f}  {row['name'][:90]}")
    for row in report.get("model_matmuls", []):
        print(f"matmul M={row['m']} K={row['k']} N={row['n']} {row['dtype']} "
              f"({row['layers']}): {row['gflops']:.1f} GFLOP/s, "
              f"{100 * row['share_of_ceiling']:.0f}% of the ceiling")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--config", default="paper", choices=("paper", "quick", "smoke"),
                        help="the profile whose architecture is measured")
    for name in ARCH_OPTIONS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                            help=f"override the profile's {name}")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: 64 on CPU, 1024 on CUDA")
    parser.add_argument("--precision", default="auto",
                        help="fp32, bf16, fp16 or auto (the engine's choice), or a comma list "
                             "to compare, e.g. fp32,bf16")
    parser.add_argument("--compile", action="store_true",
                        help="also time the torch.compile'd step (and compile the epoch run)")
    parser.add_argument("--steps", type=int, default=10, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--phases", default="pretrain,finetune",
                        help="the phases whose steps are timed (empty: none)")
    parser.add_argument("--head-multiple", default="1",
                        help="our model with its attention heads padded to a multiple of this "
                             "(benchmarks/padded_heads.py; 8: 27 -> 32), or a comma list to "
                             "compare, e.g. 1,8")
    parser.add_argument("--no-original", action="store_true",
                        help="skip the original's step and data path")
    parser.add_argument("--original-attention", default="bmm", choices=("bmm", "loop"),
                        help="the original model's attention: batched bmm (the original) or a "
                             "loop over heads")
    parser.add_argument("--no-epoch", action="store_true",
                        help="skip the epoch measurements (ours and the original's path)")
    parser.add_argument("--epoch-images", type=int, default=0,
                        help="images in the epoch measurements (default: 8 batches on CPU, "
                             "40 on CUDA)")
    parser.add_argument("--workers", default="4,cores",
                        help="DataLoader worker counts of the original's data path ('cores': "
                             "this machine's)")
    parser.add_argument("--profile", action="store_true",
                        help="profile our pretraining step and time the model's matmul shapes")
    parser.add_argument("--profile-steps", type=int, default=3, help="steps profiled")
    parser.add_argument("--profile-top", type=int, default=15, help="ops listed")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.batch_size is None:
        args.batch_size = 1024 if device.type == "cuda" else 64
    pre, ft = build_configs(args, device)
    dtypes = []
    for name in args.precision.split(","):
        dtype = autocast_dtype(name.strip(), device)
        if dtype not in dtypes:
            dtypes.append(dtype)
    sizes = (1024, 2048, 4096) if device.type == "cpu" else (4096, 8192, 16384)
    precisions = [*dtypes, *([] if args.no_original else [original_dtype(device)])]
    ceilings = {dtype_name(d): ceiling(device, d, sizes) for d in dict.fromkeys(precisions)}
    phases = [phase.strip() for phase in args.phases.split(",") if phase.strip()]
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "machine": machine(device),
        "config": {"profile": args.config, **{k: getattr(pre, k) for k in ARCH_OPTIONS},
                   "token_dim": pre.token_dim, "tokens": pre.num_tokens,
                   "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
                   "precisions": [dtype_name(d) for d in dtypes], "compile": args.compile},
        "flops": {}, "rows": [],
    }
    for phase in phases:
        report["rows"] += measure_phase(phase, pre, ft, args, device, dtypes, ceilings, report)
    if not args.no_epoch:
        images = epoch_images(pre, args, device)
        measure_epoch(pre, args, device, dtypes[0], images, report)
        if not args.no_original:
            measure_original_path(pre, args, device, images, report)
    if args.profile:
        profile_step(pre, args, device, dtypes[0], report)
        measure_model_matmuls(pre, args, device, dtypes[0], ceilings, report)
    report["ceilings"] = {name: product.result() for name, product in ceilings.items()
                          if product.times}
    report["machine"]["load_average_end"] = os.getloadavg()
    print_table(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
