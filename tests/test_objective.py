"""What training minimises: the pretraining loss scores only the tokens PatchDropout keeps,
the top-k counts, the means of an epoch, the learning-rate schedule and the optimizer.
These are pure functions; the tests that need a training run are in test_train.py."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from apl_core.config import FinetuneConfig, PretrainConfig
from apl_core.objective import (class_loss, learning_rate, make_optimizer, position_loss,
                                summarize, top1_correct, topk_hits)


class FixedOutput(nn.Module):
    """A stand-in model that returns the outputs it was built with and keeps the images."""

    def __init__(self, *outputs):
        super().__init__()
        self.outputs, self.images = outputs, None

    def forward(self, images):
        self.images = images
        return self.outputs if len(self.outputs) > 1 else self.outputs[0]


def token_cross_entropy(logits: torch.Tensor, batch: int, token: int) -> float:
    """-log softmax of token `token`'s own position, written out for one token."""
    row = logits[batch, token].double()
    return (row.exp().sum().log() - row[token]).item()


def random_position_logits(batch=2, tokens=4, seed=0):
    return torch.randn(batch, tokens, tokens, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- position_loss

def test_position_loss_is_the_mean_cross_entropy_of_the_kept_tokens():
    logits = random_position_logits()
    keep = torch.tensor([[True, False, True, True], [False, True, True, False]])
    model, images = FixedOutput(logits, keep), torch.zeros(2, 3, 8, 8)
    loss, _, count = position_loss(model, images)
    assert model.images is images
    kept = [(b, t) for b in range(2) for t in range(4) if keep[b, t]]
    expected = sum(token_cross_entropy(logits, b, t) for b, t in kept) / len(kept)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert count.item() == len(kept)


def test_a_dropped_token_does_not_change_the_loss_or_the_hits():
    logits = random_position_logits()
    keep = torch.ones(2, 4, dtype=torch.bool)
    keep[1, 2] = False
    changed = logits.clone()
    changed[1, 2] = torch.tensor([0.0, 0.0, -50.0, 50.0])  # confidently wrong, but dropped
    images = torch.zeros(2, 3, 8, 8)
    loss, hits, _ = position_loss(FixedOutput(logits, keep), images)
    changed_loss, changed_hits, _ = position_loss(FixedOutput(changed, keep), images)
    assert changed_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    assert torch.equal(changed_hits, hits)
    # the same change on a kept token raises the loss
    keep[1, 2] = True
    assert position_loss(FixedOutput(changed, keep), images)[0] > loss


def test_position_loss_of_a_single_kept_token_and_of_none():
    logits = random_position_logits()
    one = torch.zeros(2, 4, dtype=torch.bool)
    one[0, 3] = True
    loss, _, count = position_loss(FixedOutput(logits, one), torch.zeros(2, 3, 8, 8))
    assert loss.item() == pytest.approx(token_cross_entropy(logits, 0, 3), rel=1e-6)
    assert count.item() == 1
    # every token dropped: nothing to learn from, a zero loss rather than 0 / 0
    none = torch.zeros(2, 4, dtype=torch.bool)
    loss, hits, count = position_loss(FixedOutput(logits, none), torch.zeros(2, 3, 8, 8))
    assert loss.item() == 0 and count.item() == 0 and hits.tolist() == [0, 0, 0]


def test_position_loss_is_computed_in_fp32_from_low_precision_logits():
    # under bf16 autocast the model returns bf16 logits; the loss must not lose their precision
    logits = (random_position_logits(tokens=16) * 4).bfloat16()
    keep = torch.ones(2, 16, dtype=torch.bool)
    loss, _, _ = position_loss(FixedOutput(logits, keep), torch.zeros(2, 3, 8, 8))
    expected = sum(token_cross_entropy(logits.float(), b, t)
                   for b in range(2) for t in range(16)) / 32
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_position_targets_follow_the_images_device():
    # the meta device stands in for a GPU: targets made on another device than the logits fail
    images = torch.zeros(2, 3, 8, 8, device="meta")
    logits = torch.zeros(2, 4, 4, device="meta")
    keep = torch.ones(2, 4, dtype=torch.bool, device="meta")
    loss, hits, count = position_loss(FixedOutput(logits, keep), images)
    assert loss.device.type == hits.device.type == count.device.type == "meta"


# ---------------------------------------------------------------- top-k and means

def test_topk_hits_counts_rows_with_the_target_among_the_top_logits():
    # the target's rank in each row: 1st, 2nd, 4th, 6th of 6 classes
    logits = torch.tensor([[9.0, 1, 2, 3, 4, 5],
                           [1.0, 2, 3, 4, 5, 9],
                           [5.0, 4, 3, 2, 1, 0],
                           [0.0, 1, 2, 3, 4, 5]])
    targets = torch.tensor([0, 4, 3, 0])
    assert topk_hits(logits, targets).tolist() == [1, 2, 3]
    mask = torch.tensor([True, False, True, True])
    assert topk_hits(logits, targets, mask).tolist() == [1, 1, 2]
    assert topk_hits(logits, targets).dtype == torch.float32


def test_topk_hits_with_fewer_classes_than_k():
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    targets = torch.tensor([0, 0, 1])
    assert topk_hits(logits, targets).tolist() == [1, 3, 3]
    # rows in a (batch, tokens, classes) tensor, more tokens than classes
    assert topk_hits(logits.expand(2, 3, 2), targets.expand(2, 3)).tolist() == [2, 6, 6]


def test_class_loss_is_the_cross_entropy_of_the_class_logits():
    images = torch.randn(5, 10, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([3, 0, 9, 3, 1])
    loss, hits, count = class_loss(nn.Identity(), images, labels)  # logits = images
    expected = -sum(images[i].log_softmax(0)[label].item() for i, label in enumerate(labels)) / 5
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert torch.equal(hits, topk_hits(images, labels))
    assert count.item() == 5
    meta = class_loss(nn.Identity(), images.to("meta"), labels.to("meta"))
    assert [value.device.type for value in meta] == ["meta"] * 3


def test_class_loss_smooths_the_target_over_every_class():
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([3, 0, 9, 3])
    loss, hits, _ = class_loss(nn.Identity(), logits, labels, label_smoothing=0.1)
    # the target: 0.9 on the label plus 0.01 on every class (0.91 on the label)
    target = torch.full((4, 10), 0.01)
    target[torch.arange(4), labels] += 0.9
    expected = -(target * logits.log_softmax(1)).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(hits, topk_hits(logits, labels))
    plain, _, _ = class_loss(nn.Identity(), logits, labels)
    assert plain.item() != pytest.approx(loss.item())


def test_class_loss_of_soft_targets_scores_the_label_with_the_larger_share():
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(3))
    soft = torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.0, 0.0, 0.4, 0.6], [0.0, 1.0, 0.0, 0.0]])
    loss, hits, count = class_loss(nn.Identity(), logits, soft)
    expected = -(soft * logits.log_softmax(1)).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(hits, topk_hits(logits, torch.tensor([0, 3, 1])))
    assert count.item() == 3
    smoothed, _, _ = class_loss(nn.Identity(), logits, soft, label_smoothing=0.2)
    target = 0.8 * soft + 0.05  # 0.2 spread over 4 classes
    assert smoothed.item() == pytest.approx(-(target * logits.log_softmax(1)).sum(1).mean().item(),
                                            rel=1e-6)


def test_top1_correct_marks_each_row_whose_top_logit_is_its_target():
    logits = torch.tensor([[9.0, 1, 2], [1.0, 2, 3], [5.0, 5.0, 1], [0.0, 0.0, 0.0]])
    targets = torch.tensor([0, 1, 0, 0])
    correct = top1_correct(logits, targets)
    assert correct.dtype == torch.bool and correct.tolist() == [True, False, True, True]
    # the same rows topk_hits counts at top-1, ties included
    assert correct.sum().item() == topk_hits(logits, targets)[0].item()
    wide = torch.randn(50, 12, generator=torch.Generator().manual_seed(4)).round()
    labels = torch.randint(0, 12, (50,), generator=torch.Generator().manual_seed(5))
    assert top1_correct(wide, labels).sum().item() == topk_hits(wide, labels)[0].item()


def test_summarize_divides_every_sum_by_the_count():
    means = summarize(torch.tensor([6.0, 2.0, 3.0, 4.0, 4.0]))
    assert means == {"loss": 1.5, "top1": 0.5, "top3": 0.75, "top5": 1.0}
    assert summarize(torch.tensor([0.5, 1.0, 1.0, 1.0, 1.0]))["loss"] == 0.5  # one image
    # an empty evaluation reports zeros instead of dividing by zero
    assert summarize(torch.zeros(5)) == {"loss": 0.0, "top1": 0.0, "top3": 0.0, "top5": 0.0}


# ---------------------------------------------------------------- learning-rate schedule

def test_schedule_warms_up_then_anneals():
    config = FinetuneConfig(epochs=100, lr=1e-3, warmup_frac=0.1, warmup_start=0.5,
                            final_lr_frac=0.1)
    rates = [learning_rate(epoch, config) for epoch in range(100)]
    assert rates[0] == pytest.approx(0.5e-3)
    assert max(range(100), key=rates.__getitem__) == 10  # the peak ends the warm-up
    assert all(a < b for a, b in zip(rates[:10], rates[1:11]))
    assert all(a > b for a, b in zip(rates[10:], rates[11:]))
    assert rates[-1] == pytest.approx(1e-4, rel=0.01)
    assert learning_rate(100, config) == pytest.approx(1e-4)


def test_schedule_is_warm_up_times_cosine():
    config = PretrainConfig(epochs=10, lr=2e-3, warmup_frac=0.2, warmup_start=0.25,
                            final_lr_frac=0.1)
    def cosine(progress):  # from 1 at the start to final_lr_frac at the end
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress / 10))
    # warm-up: linear from warmup_start x lr at 0 to lr at 2 epochs, times the cosine
    assert learning_rate(0, config) == pytest.approx(0.25 * 2e-3)
    assert learning_rate(1, config) == pytest.approx((0.25 + 0.75 / 2) * 2e-3 * cosine(1))
    assert learning_rate(2, config) == pytest.approx(2e-3 * cosine(2))
    # halfway the cosine is the mean of its two ends; past the end it stays at the final rate
    assert learning_rate(5, config) == pytest.approx(2e-3 * (1 + 0.1) / 2)
    assert learning_rate(10, config) == pytest.approx(0.1 * 2e-3)
    assert learning_rate(12, config) == pytest.approx(0.1 * 2e-3)


def test_schedule_without_warm_up_starts_at_the_full_rate():
    config = PretrainConfig(epochs=4, lr=1e-3, warmup_frac=0.0, final_lr_frac=0.0)
    assert learning_rate(0, config) == pytest.approx(1e-3)
    assert learning_rate(4, config) == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- optimizer

@pytest.mark.parametrize("kind,decoupled", [("adam", False), ("adamw", True)])
def test_make_optimizer_kind_weight_decay_and_first_rate(kind, decoupled):
    config = PretrainConfig(optimizer=kind, weight_decay=0.05, lr=1e-3, warmup_start=0.5)
    params = [nn.Parameter(torch.ones(3))]
    optimizer = make_optimizer(params, config, torch.device("cpu"))
    assert type(optimizer) is (torch.optim.AdamW if decoupled else torch.optim.Adam)
    group = optimizer.param_groups[0]
    assert group["params"] == params
    assert group["lr"] == pytest.approx(learning_rate(0, config)) == pytest.approx(0.5e-3)
    assert group["weight_decay"] == 0.05


def test_make_optimizer_sgd_is_nesterov_momentum_with_its_weight_decay():
    config = PretrainConfig(optimizer="sgd", weight_decay=5e-4, lr=0.1, warmup_start=0.1)
    params = [nn.Parameter(torch.ones(3))]
    optimizer = make_optimizer(params, config, torch.device("cpu"))
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert group["params"] == params
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 5e-4)
    assert group["lr"] == pytest.approx(0.01)
    assert optimizer.defaults["foreach"] is True


def test_make_optimizer_uses_fused_kernels_on_cuda():
    # only the flag is checked: building the optimizer does not touch the device
    params = [nn.Parameter(torch.ones(3))]
    cuda = make_optimizer(params, PretrainConfig(), torch.device("cuda"))
    assert cuda.defaults["fused"] is True and not cuda.defaults["foreach"]
    cpu = make_optimizer(params, PretrainConfig(), torch.device("cpu"))
    assert cpu.defaults["foreach"] is True and not cpu.defaults["fused"]
