"""The training engine: APL pretraining and fine-tuning share one loop.

    pretrain(config) / finetune(config)   load the data, build the model, then call `fit`
    load_pretrained / load_finetuned     a finished run's model, ready to analyse
    load_finetune_model                  the model a fine-tuning run starts from
    fit                                  the epoch loop: train, evaluate, checkpoint, log
    train_one_epoch / evaluate           one pass over a loader

What one batch costs in each phase (`position_loss`, `class_loss`) and the learning-rate
schedule live in `apl_core.objective`; the device and the autocast precision are chosen in
`apl_core.device`. The rate is a pure function of training progress, so there is no scheduler
object: a resumed run recomputes the rate from the epoch it continues at. Metric sums stay on
the device during an epoch and are read once at its end (no host sync per step). A
pretraining on another pretext task than APL's takes its model and loss from
`apl_core.pretext`.

Each run lives in its run directory (`apl_core.rundir`). Starting a new run where a run with a
checkpoint exists is an error: continue it with resume=True, or give another run_name.
Resuming with more epochs than the run had recomputes the schedule for the new total: warm-up
is not repeated, and the cosine curve is stretched over the new number of epochs from the
current epoch on.
"""
from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .analysis import knn_accuracy
from .augment import AugmentSpec, MixSpec
from .checkpoint import (
    check_architecture, load_phase_checkpoint, pretrain_architecture, restore_rng_state,
    rng_state, save_checkpoint,
)
from .config import ARCHITECTURE_FIELDS, Config, FinetuneConfig, PretrainConfig
from .data import BatchLoader, ImageSet, finetune_sets, knn_sets, pretraining_images
from .device import autocast, autocast_dtype, resolve_device
from .distributed import (
    DistContext, all_gather_object, all_reduce_sum, init_distributed, local_device,
)
from .model import build_finetune_model
from .objective import (
    TOP_K, LossFn, class_loss, learning_rate, make_optimizer, summarize, top1_correct,
)
from .pretext import build_pretext_model, pretext_loss
from .rundir import RunLog, computed_precision, open_run


@dataclass
class RunResult:
    run_dir: Path
    checkpoint: Path  # run_dir / "last.pt"
    metrics: list[dict]  # one row per epoch, as in metrics.jsonl
    config: Config


# ---------------------------------------------------------------- one epoch

@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None: fp32
    context: DistContext


def runtime(config: Config) -> Runtime:
    """Device, precision and process group; seeds torch (each rank its own stream of
    PatchDropout masks; DDP copies rank 0's initial weights to every rank)."""
    device = resolve_device(config.device)
    context = init_distributed(device)
    device = local_device(device, context)
    dtype = autocast_dtype(config.precision, device)
    torch.manual_seed(config.seed + context.rank)
    return Runtime(device, dtype, context)


@dataclass
class Trainer:
    """What a training step needs: the model as it trains (wrapped by DDP, compiled when the
    config asks), the phase's loss, the optimizer, the fp16 loss scaler and the runtime."""
    model: nn.Module
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    rt: Runtime


def make_trainer(model: nn.Module, loss_fn: LossFn, config: Config, rt: Runtime,
                 train_model: nn.Module | None = None) -> Trainer:
    """The optimizer over `model`'s trainable parameters and the fp16 loss scaler (enabled only
    under fp16 autocast), around `train_model`: the model as it trains, when it is `model`
    wrapped by DDP or compiled."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return Trainer(model if train_model is None else train_model, loss_fn,
                   make_optimizer(trainable, config, rt.device),
                   torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == torch.float16), rt)


def train_one_epoch(trainer: Trainer, loader, epoch: int, config: Config,
                    progress=None) -> dict:
    """One pass over the training loader; returns mean loss, top-1/3/5 and images seen."""
    model, optimizer, scaler = trainer.model, trainer.optimizer, trainer.scaler
    model.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    totals = torch.zeros(2 + len(TOP_K), device=next(iter(params)).device)
    images_seen, steps = 0, len(loader)
    for i, (images, labels) in enumerate(loader):
        progress_epochs = epoch + i / steps if config.schedule_per_step else epoch
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(progress_epochs, config)
        with autocast(images.device, trainer.rt.dtype):
            loss, hits, count = trainer.loss_fn(model, images, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        totals += torch.cat([(loss.detach() * count)[None], hits, count[None]])
        images_seen += images.shape[0]
        if progress is not None:
            progress.update(1)
    return {**summarize(all_reduce_sum(totals, trainer.rt.context)),
            "images": images_seen * trainer.rt.context.world_size}


def evaluate(model, loss_fn: LossFn, loader, rt: Runtime) -> dict:
    """Mean loss and top-1/3/5 over an evaluation loader (each image once), in eval mode:
    no dropout, no PatchDropout, no gradients."""
    model.eval()
    totals = torch.zeros(2 + len(TOP_K), device=rt.device)
    with torch.no_grad():
        for images, labels in loader:
            with autocast(rt.device, rt.dtype):
                loss, hits, count = loss_fn(model, images, labels)
            totals += torch.cat([(loss * count)[None], hits, count[None]])
    return summarize(all_reduce_sum(totals, rt.context))


def evaluate_correct(model, loader, rt: Runtime) -> torch.Tensor:
    """Which images of an evaluation loader the model gets right (top-1), as a bool tensor
    over the loader's images in their order in the data, in eval mode, no gradients."""
    model.eval()
    correct = torch.zeros(len(loader.data), device=rt.device)
    with torch.no_grad():
        for index, (images, labels) in zip(loader.indices(), loader):
            with autocast(rt.device, rt.dtype):
                logits = model(images)
            correct[index.to(rt.device)] = top1_correct(logits, labels).float()
    # every image is on exactly one rank: the sum over ranks is the whole set
    return all_reduce_sum(correct, rt.context).bool()


def correct_mask(correct: torch.Tensor) -> str:
    """A bool vector as a hex bitmask, bit i for image i (stats.decode_mask reads it back):
    which validation images an epoch got right, in a few hundred characters."""
    bits = "".join("1" if c else "0" for c in reversed(correct.tolist()))
    return f"{int(bits or '0', 2):0{max(1, math.ceil(len(bits) / 4))}x}"


# ---------------------------------------------------------------- the loop shared by both phases

TRAIN_METRICS = {"pretrain": ("loss", "top1", "top3", "top5"), "finetune": ("loss", "top1")}
PROGRESS_METRICS = ("train_loss", "train_top1", "val_top1", "test_top1", "images_per_s")


@dataclass
class Run:
    """A run about to train: its config, its directory, what its weights fit (saved with
    them, see `apl_core.checkpoint`) and its last.pt when it resumes."""
    config: Config
    dir: Path
    architecture: dict
    resume_from: dict | None


def fit(run: Run, model: nn.Module, loss_fn: LossFn, train_loader,
        evaluate_epoch: Callable[[int], dict], rt: Runtime) -> RunResult:
    """Train `model` for config.epochs epochs (from the checkpoint's epoch when resuming):
    each epoch trains, evaluates (`evaluate_epoch(epoch) -> metrics`), then saves last.pt and
    appends a metrics row. A non-finite loss stops the run before anything is saved."""
    config, run_dir, resume_from = run.config, run.dir, run.resume_from
    start, step, rows = 0, 0, []
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
    train_model = DistributedDataParallel(model) if rt.context.enabled else model
    if config.compile:
        train_model = torch.compile(train_model)
    trainer = make_trainer(model, loss_fn, config, rt, train_model)
    optimizer, scaler = trainer.optimizer, trainer.scaler
    if resume_from is not None:
        optimizer.load_state_dict(resume_from["optimizer"])
        scaler.load_state_dict(resume_from["scaler"])
        states = resume_from["rng"]  # one per rank of the run that saved it
        restore_rng_state(states[rt.context.rank % len(states)])
        start, step, rows = resume_from["epoch"], resume_from["step"], resume_from["metrics"]
    main, quiet = rt.context.is_main, config.quiet or not rt.context.is_main
    log = RunLog(run_dir, config, rows) if main else None
    if not quiet:
        resuming = f" (resuming after epoch {start})" if start else ""
        print(f"{config.phase} run: {run_dir}{resuming}")

    epochs = tqdm(range(start, config.epochs), initial=start, total=config.epochs,
                  desc=config.phase, unit="epoch", disable=quiet)
    for epoch in epochs:
        train_loader.set_epoch(epoch)
        started = time.perf_counter()
        with tqdm(total=len(train_loader), desc=f"epoch {epoch + 1}", unit="batch",
                  leave=False, disable=quiet) as batches:
            train = train_one_epoch(trainer, train_loader, epoch, config, batches)
        step_seconds = time.perf_counter() - started
        if not math.isfinite(train["loss"]):
            raise NonFiniteLossError(config, epoch + 1, run_dir, train["loss"])
        step += len(train_loader)
        row = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
               **{f"train_{key}": train[key] for key in TRAIN_METRICS[config.phase]},
               **evaluate_epoch(epoch + 1),
               "images_per_s": train["images"] / step_seconds,
               "epoch_time_s": time.perf_counter() - started}
        weights = {"phase": config.phase, "epoch": epoch + 1, "config": config.to_dict(),
                   "precision": computed_precision(config), "architecture": run.architecture,
                   "model": model.state_dict(), "row": row}
        if main and _improves(config, rows, row):
            save_checkpoint(weights, run_dir / "best.pt")
        if main and getattr(config, "snapshot_every", 0) and \
                (epoch + 1) % config.snapshot_every == 0:
            snapshot_path(run_dir, epoch + 1).parent.mkdir(exist_ok=True)
            save_checkpoint(weights, snapshot_path(run_dir, epoch + 1))
        rows.append(row)
        rng = all_gather_object(rng_state(), rt.context)  # every rank's, for an exact resume
        if main:
            save_checkpoint({**weights, "step": step, "optimizer": optimizer.state_dict(),
                             "scaler": scaler.state_dict(), "rng": rng, "metrics": rows},
                            run_dir / "last.pt")
            log.add(row)
        epochs.set_postfix({k: round(v, 4) for k, v in row.items() if k in PROGRESS_METRICS})
    if log is not None:
        log.close()
    return RunResult(run_dir, run_dir / "last.pt", rows, config)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; raised before the epoch is saved. `epoch` (1-based),
    `run_dir` and `loss` say where: the run's metrics hold the epochs before it."""

    def __init__(self, config: Config, epoch: int, run_dir: Path, loss: float):
        self.epoch, self.run_dir, self.loss = epoch, run_dir, loss
        kept = (f"{run_dir / 'last.pt'} still holds epoch {epoch - 1}" if epoch > 1
                else "no checkpoint was written")
        super().__init__(
            f"the {config.phase} loss became {loss} in epoch {epoch}; the run stopped and "
            f"{kept}. Try a lower lr (now {config.lr}), grad_clip > 0 (e.g. 1.0) or "
            f"precision='fp32' (now {config.precision!r})")


def snapshot_path(run_dir: str | Path, epoch: int) -> Path:
    """Where a pretraining run with snapshot_every keeps its weights after `epoch`."""
    return Path(run_dir) / "snapshots" / f"epoch{epoch}.pt"


def _improves(config: Config, rows: list[dict], row: dict) -> bool:
    """select_best: does this epoch's validation accuracy beat every earlier one?"""
    if not getattr(config, "select_best", False) or "val_top1" not in row:
        return False
    return all(row["val_top1"] > earlier.get("val_top1", -1.0) for earlier in rows)


def _finished(run_dir: Path, checkpoint: dict, config: Config) -> RunResult | None:
    """The result of a run that already has all its epochs (resume returns it at once)."""
    if checkpoint is None or checkpoint["epoch"] < config.epochs:
        return None
    saved = type(config).from_dict(checkpoint["config"])
    return RunResult(run_dir, run_dir / "last.pt", checkpoint["metrics"], saved)


def _loader(data: ImageSet, config: Config, rt: Runtime, train: bool) -> BatchLoader:
    """Training: shuffled, augmented (RandomResizedCrop scale (crop_scale, 1), and in
    fine-tuning the config's augment_policy, MixUp and CutMix). Evaluation: in order, only
    normalized, every image exactly once."""
    augment = mix = None
    if train:
        augment = AugmentSpec(scale=(config.crop_scale, 1.0),
                              policy=getattr(config, "augment_policy", "none"))
        if getattr(config, "mixup_alpha", 0) or getattr(config, "cutmix_alpha", 0):
            mix = MixSpec(config.mixup_alpha, config.cutmix_alpha, config.num_classes)
    return BatchLoader(data, config.batch_size, shuffle=train,
                       drop_last=train and config.phase == "pretrain", device=rt.device,
                       augment=augment, mix=mix, seed=config.seed, rank=rt.context.rank,
                       world_size=rt.context.world_size)


# ---------------------------------------------------------------- pretraining

def pretrain(config: PretrainConfig, resume: bool | str = False) -> RunResult:
    """APL pretraining (docs/method.md, 'Pretraining recipe'), or another pretext task's
    (config.pretext, apl_core.pretext: its model and loss, the same loop). resume: False (a
    new run), True (continue this config's run; error if there is none) or 'auto' (continue
    when there is a checkpoint, else start; a finished run returns at once)."""
    config, run_dir, checkpoint = open_run(config, resume)
    if (done := _finished(run_dir, checkpoint, config)) is not None:
        return done
    run = Run(config, run_dir, pretrain_architecture(config), checkpoint)
    if checkpoint is not None:
        check_architecture(checkpoint["architecture"], run.architecture, run_dir / "last.pt")
    rt = runtime(config)
    train_set, held_out = pretraining_images(config)
    if len(train_set) < config.batch_size:
        raise ValueError(f"batch_size={config.batch_size} is larger than the {len(train_set)} "
                         f"training images; lower batch_size or raise num_images")
    knn = knn_sets(config) if config.knn_every else None
    model = build_pretext_model(config).to(rt.device)
    loss_fn = pretext_loss(config.pretext)
    held_out_loader = _loader(held_out, config, rt, train=False) if len(held_out) else None

    def evaluate_epoch(epoch: int) -> dict:
        metrics = {}
        if held_out_loader is not None:
            held = evaluate(model, loss_fn, held_out_loader, rt)
            metrics.update({f"val_{key}": value for key, value in held.items()})
        if knn is not None and (epoch % config.knn_every == 0 or epoch == config.epochs):
            metrics["knn_top1"] = knn_accuracy(model.transformer, *knn, device=rt.device)
        return metrics

    return fit(run, model, loss_fn, _loader(train_set, config, rt, train=True),
               evaluate_epoch, rt)


def load_pretrained(path_or_run_name: str | Path, runs_dir: str | Path = "runs",
                    device: str = "cpu") -> tuple[nn.Module, PretrainConfig]:
    """A pretrained model (eval mode; its pretext's, apl_core.pretext) and its config, from a
    checkpoint path or run name."""
    checkpoint = load_phase_checkpoint(path_or_run_name, "pretrain", runs_dir)
    config = PretrainConfig.from_dict(checkpoint["config"])
    model = build_pretext_model(config)
    model.load_state_dict(checkpoint["model"])
    return model.to(resolve_device(device)).eval(), config


# ---------------------------------------------------------------- fine-tuning

def load_finetuned(path_or_run_name: str | Path, device: str = "cpu",
                   runs_dir: str | Path = "runs") -> tuple[nn.Module, FinetuneConfig]:
    """A fine-tuned model (eval mode) and its config, from a checkpoint path, run directory
    or run name. The architecture comes from the checkpoint itself, so the pretrained run it
    started from need not be at hand."""
    checkpoint = load_phase_checkpoint(path_or_run_name, "finetune", runs_dir)
    config = FinetuneConfig.from_dict(checkpoint["config"])
    found = checkpoint["architecture"]
    model = build_finetune_model(config.replace(pretrained="", architecture={
        name: found[name] for name in ARCHITECTURE_FIELDS if name in found}))
    model.load_state_dict(checkpoint["model"])
    return model.to(resolve_device(device)).eval(), config


def load_finetune_model(config: FinetuneConfig) -> tuple[nn.Module, dict]:
    """The model a fine-tuning run starts from, with the pretrained run's transformer weights
    when it has one, and its architecture (what its checkpoints record, compared with last.pt
    on resume): a baseline, the APL classifier on a pretrained transformer, or BENCHMARK's
    fresh one."""
    architecture = {"model": config.model, "image_size": config.image_size,
                    "num_classes": config.num_classes}
    if config.model != "apl":
        return build_finetune_model(config), architecture
    if not config.pretrained:
        model = build_finetune_model(config)
    else:
        pretrained = load_phase_checkpoint(config.pretrained, "pretrain", config.runs_dir)
        check_architecture(pretrained["architecture"],
                           {"image_size": config.image_size, **config.architecture},
                           config.pretrained)
        model = build_finetune_model(config, PretrainConfig.from_dict(pretrained["config"]))
        prefix = "transformer."
        weights = {k[len(prefix):]: v for k, v in pretrained["model"].items()
                   if k.startswith(prefix)}
        # a positional embedding is new to the pretrained model: it keeps its initialisation
        missing, unexpected = model.transformer.load_state_dict(weights, strict=False)
        if set(missing) - {"position_embedding"} or unexpected:
            raise ValueError(f"pretrained={config.pretrained!r} does not fit the transformer: "
                             f"missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    transformer = model.transformer.config
    architecture.update({name: getattr(transformer, name) for name in ARCHITECTURE_FIELDS
                         if name != "mlp_head"}, mlp_head=config.mlp_head)
    return model, architecture


def best_epoch_test_top1(run_dir: str | Path, device: str = "auto") -> float:
    """Test top-1 of a select_best run's best validation epoch (its best.pt): how a search
    looks at the test set once, after the choice, with the weights the choice kept."""
    path = Path(run_dir) / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: only a run with select_best=True and "
                                f"a validation part keeps its best epoch; train it with those")
    model, config = load_finetuned(path, device=device)
    rt = runtime(config.replace(device=device))
    test = _loader(finetune_sets(config)[2], config, rt, train=False)
    return evaluate(model, class_loss, test, rt)["top1"]


def finetune(config: FinetuneConfig, resume: bool | str = False) -> RunResult:
    """Fine-tuning, linear probing, BENCHMARK and the CNN baselines (docs/method.md, 'Fine-tuning
    recipe'); `resume` as in `pretrain`. Evaluates on the whole test set (unless
    evaluate_test is off) and the validation part every eval_every epochs and at the last
    one; a validation records which of its images the epoch got right (`val_correct`, a
    correct_mask), so that two runs can be compared image by image."""
    config, run_dir, checkpoint = open_run(config, resume)
    if (done := _finished(run_dir, checkpoint, config)) is not None:
        return done
    rt = runtime(config)
    model, architecture = load_finetune_model(config)
    run = Run(config, run_dir, architecture, checkpoint)
    if checkpoint is not None:
        check_architecture(checkpoint["architecture"], architecture, run_dir / "last.pt")
    train_set, val_set, test_set = finetune_sets(config)
    model.to(rt.device)
    test_loader = _loader(test_set, config, rt, train=False) if config.evaluate_test else None
    val_loader = _loader(val_set, config, rt, train=False) if val_set is not None else None

    def evaluate_epoch(epoch: int) -> dict:
        if epoch % config.eval_every and epoch != config.epochs:
            return {}
        metrics = {}
        if config.evaluate_test:
            test = evaluate(model, class_loss, test_loader, rt)
            metrics.update(test_top1=test["top1"], test_top3=test["top3"],
                           test_top5=test["top5"], test_nll=test["loss"])
        if val_loader is not None:
            correct = evaluate_correct(model, val_loader, rt)
            metrics.update(val_top1=correct.sum().item() / correct.numel(),
                           val_correct=correct_mask(correct))
        return metrics

    train_loss = functools.partial(class_loss, label_smoothing=config.label_smoothing)
    return fit(run, model, train_loss, _loader(train_set, config, rt, train=True),
               evaluate_epoch, rt)
