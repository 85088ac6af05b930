"""The throughput benchmark runs end to end on a small model and reports every variant it is
asked for: its numbers are measurements, so only their presence and consistency are checked.
The padded-head layout it times (benchmarks/padded_heads.py) computes and trains as our model
does."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from apl_core.config import FinetuneConfig, PretrainConfig, profile_config
from apl_core.model import build_classifier, build_pretrain_model
from apl_core.puzzle import position_targets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from padded_heads import PaddedSelfAttention, pad_heads  # noqa: E402

SMALL = dict(image_size=32, grid=4, crop=1, heads=3, blocks=2, hidden_mult=2)


@pytest.mark.slow
def test_throughput_benchmark_reports_ours_against_the_original(tmp_path):
    out = tmp_path / "throughput.json"
    subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "--config", "smoke", "--steps", "2",
         "--warmup", "1", "--batch-size", "8", "--epoch-images", "16", "--workers", "1",
         "--precision", "fp32", "--head-multiple", "1,2", "--profile", "--json", str(out)],
        cwd=ROOT, check=True, capture_output=True, timeout=300)
    report = json.loads(out.read_text())
    assert report["machine"]["cpu"]  # every number is reported next to the CPU it ran on
    variants = {(r["phase"], r["variant"]) for r in report["rows"]}
    for phase in ("pretrain", "finetune"):
        assert {(phase, "ours fp32"), (phase, "ours fp32 head-pad 2"),
                (phase, "original fp32")} <= variants
    for row in report["rows"]:
        assert row["images_per_s"] > 0 and row["flops_per_image"] > 0
    original = {r["phase"]: r["images_per_s"] for r in report["rows"]
                if r["variant"] == "original fp32"}
    for row in report["rows"]:
        assert row["speedup_vs_original"] == pytest.approx(
            row["images_per_s"] / original[row["phase"]])
    assert [r["workers"] for r in report["original_path"]["rows"]] == [1]
    assert report["epoch"]["images_per_s"] > 0
    assert report["profile"]["top"] and 0 < report["profile"]["matmul_share"] < 1
    assert {m["layers"] for m in report["model_matmuls"]} >= {"output projection"}


def _padded_and_unpadded(attention_scale="standard"):
    """The SMALL pretraining model (head dimension 49) from seed 0, and a copy of it with its
    heads padded to 56 (multiple 8); dropout off."""
    config = PretrainConfig(**SMALL, dropout=0.0, patch_dropout=0.0,
                            attention_scale=attention_scale)
    torch.manual_seed(0)
    unpadded = build_pretrain_model(config)
    return unpadded, pad_heads(copy.deepcopy(unpadded), 8)


def _padding_is_zero(attn) -> bool:
    """True if the padded features of the qkv and proj weights are exactly zero."""
    return all(torch.equal(attn.padded(attn.unpadded(weight, axis), axis), weight)
               for weight, axis in ((attn.qkv.weight, 0), (attn.proj.weight, 1)))


def test_the_pretext_cost_benchmark_times_every_task_it_is_asked_for(tmp_path, capsys,
                                                                    monkeypatch):
    import pretext_cost
    passes = []
    real_epoch = pretext_cost.train_one_epoch

    def one_epoch(trainer, loader, epoch, config):
        passes.append((config.pretext, len(loader), epoch))
        return real_epoch(trainer, loader, epoch, config)

    monkeypatch.setattr(pretext_cost, "train_one_epoch", one_epoch)
    out = tmp_path / "cost.json"
    results = pretext_cost.main(["--profile", "smoke", "--tasks", "apl", "mae", "--steps", "2",
                                 "--rounds", "2", "--device", "cpu", "--out", str(out)])
    assert json.loads(out.read_text()) == results
    # a warm-up pass per task, then the rounds interleaved: a noisy moment hits every task
    assert passes == [("apl", 2, 0), ("mae", 2, 0), ("apl", 2, 1), ("mae", 2, 1),
                      ("apl", 2, 2), ("mae", 2, 2)]
    rows = {row["task"]: row for row in results["tasks"]}
    assert set(rows) == {"apl", "mae"} and rows["apl"]["relative_to_apl"] == 1
    smoke = profile_config("smoke", "pretrain")
    epoch = (smoke.num_images - smoke.holdout_images) // smoke.batch_size * smoke.batch_size
    for row in rows.values():
        low, high = row["images_per_s_range"]
        assert low <= row["images_per_s"] <= high
        assert row["epoch_images"] == epoch
        assert row["epoch_seconds"] == pytest.approx(epoch / row["images_per_s"])
    assert rows["mae"]["relative_to_apl"] == pytest.approx(
        rows["mae"]["epoch_seconds"] / rows["apl"]["epoch_seconds"])
    assert results["command"].startswith("python benchmarks/pretext_cost.py --profile smoke")
    assert (results["steps"], results["rounds"]) == (2, 2) and "machine" in results
    assert "mae" in capsys.readouterr().out
    alone = pretext_cost.main(["--profile", "smoke", "--tasks", "mae", "--steps", "1",
                               "--rounds", "1", "--device", "cpu", "--out", str(out)])
    assert alone["tasks"][0]["relative_to_apl"] is None  # no APL to compare with
    with pytest.raises(SystemExit):
        pretext_cost.main(["--steps", "0"])


def test_padding_reaches_every_attention_layer_and_keeps_a_frozen_one_frozen():
    config = PretrainConfig(**SMALL)  # D = 147, 3 heads of 49
    torch.manual_seed(0)
    models = [build_pretrain_model(config),
              build_classifier(FinetuneConfig(head_only=True), config)]
    for model in models:
        pad_heads(model, 8)
        for block in model.transformer.blocks:
            attn = block.attn
            assert isinstance(attn, PaddedSelfAttention)
            # 49 -> 56 features per head; the layers describe their padded sizes
            assert attn.qkv.weight.shape == (3 * 3 * 56, 147)
            assert attn.proj.weight.shape == (147, 3 * 56)
            assert (attn.qkv.out_features, attn.qkv.in_features) == attn.qkv.weight.shape
            assert (attn.proj.out_features, attn.proj.in_features) == attn.proj.weight.shape
            assert _padding_is_zero(attn)
    assert not any(p.requires_grad for p in models[1].transformer.parameters())


@pytest.mark.parametrize("attention_scale", ["standard", "original"])
@pytest.mark.parametrize("return_attention", [False, True])
def test_padded_heads_compute_the_same_function_and_gradients(attention_scale,
                                                              return_attention):
    """Heads padded with zero features (27 -> 32 on the paper model, 49 -> 56 here): the same
    logits, attention weights and gradients of the real weights as the seeded model they were
    padded from, with either attention scaling; the padding's gradients are exactly zero."""
    unpadded, padded = _padded_and_unpadded(attention_scale)
    attn = padded.transformer.blocks[0].attn
    assert (attn.head_dim, attn.padded_head_dim) == (49, 56)
    patches = unpadded.transformer.patches(torch.randn(4, 3, 32, 32))
    outputs = [model.position_logits(patches, return_attention) for model in (unpadded, padded)]
    (logits, _, attention), (padded_logits, _, padded_attention) = outputs
    torch.testing.assert_close(padded_logits, logits, atol=1e-5, rtol=1e-5)
    assert len(padded_attention) == len(attention) == (2 if return_attention else 0)
    for ours, theirs in zip(padded_attention, attention):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    for model, (out, _, _) in zip((unpadded, padded), outputs):
        model.zero_grad()
        out.square().sum().backward()
    gradients = dict(unpadded.named_parameters())
    for name, parameter in padded.named_parameters():
        grad = parameter.grad
        if name.endswith(("attn.qkv.weight", "attn.proj.weight")):
            block = padded.transformer.blocks[int(name.split(".")[2])].attn
            axis = 0 if "qkv" in name else 1
            assert torch.equal(block.padded(block.unpadded(grad, axis), axis), grad), name
            grad = block.unpadded(grad, axis)
        torch.testing.assert_close(grad, gradients[name].grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("optimizer, weight_decay", [("adam", 1e-4), ("adamw", 0.05)])
def test_padded_heads_stay_zero_while_training(optimizer, weight_decay):
    """Adam (L2 weight decay) and AdamW (decoupled) leave the padding exactly zero step after
    step, and the real weights follow the unpadded model's training."""
    kind = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    models = _padded_and_unpadded()
    optimizers = [kind(model.parameters(), lr=1e-3, weight_decay=weight_decay)
                  for model in models]
    torch.manual_seed(1)
    batches = [torch.randn(4, 3, 32, 32) for _ in range(5)]
    targets = position_targets(4, 16)
    for images in batches:
        for model, opt in zip(models, optimizers):
            logits, _ = model(images)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
    unpadded, padded = models
    assert all(_padding_is_zero(block.attn) for block in padded.transformer.blocks)
    trained = unpadded.state_dict()
    for name, value in padded.state_dict().items():
        torch.testing.assert_close(value, trained[name], atol=1e-5, rtol=1e-4)


def test_padded_heads_state_dict_round_trips():
    """state_dict() is the unpadded layout, so a padded model's checkpoint loads into an
    unpadded model and back, and an unpadded one loads padded (with zero padding)."""
    unpadded, padded = _padded_and_unpadded()
    state = padded.state_dict()
    assert {name: value.shape for name, value in state.items()} == \
        {name: value.shape for name, value in unpadded.state_dict().items()}
    other_unpadded, other_padded = _padded_and_unpadded()
    for p in (*other_unpadded.parameters(), *other_padded.parameters()):
        torch.nn.init.normal_(p)  # overwrite everything, padding included
    other_unpadded.load_state_dict(state)
    other_padded.load_state_dict(unpadded.state_dict())
    assert all(_padding_is_zero(block.attn) for block in other_padded.transformer.blocks)
    for model in (other_unpadded, other_padded):
        for name, value in model.state_dict().items():
            assert torch.equal(value, state[name]), name
    padded.load_state_dict(other_padded.state_dict())
    images = torch.randn(2, 3, 32, 32)
    for model in (unpadded, padded, other_unpadded, other_padded):
        model.eval()
    with torch.no_grad():
        expected = unpadded(images)[0]
        for model in (padded, other_unpadded, other_padded):
            torch.testing.assert_close(model(images)[0], expected, atol=1e-5, rtol=1e-5)


def test_mutation_scores_counts_each_module_and_leaves_out_the_listed_equivalents(capsys,
                                                                                  tmp_path):
    import mutation_scores
    listed = tmp_path / "equivalent.txt"
    listed.write_text("# a comment\napl_core.data.loader.x_f__mutmut_2  a default argument\n"
                      "apl_core.report.x_g__mutmut_9  gone since\n")
    assert mutation_scores.equivalent_mutants(listed) == {
        "apl_core.data.loader.x_f__mutmut_2": "a default argument",
        "apl_core.report.x_g__mutmut_9": "gone since"}
    statuses = {"apl_core.data.loader.x_f__mutmut_1": "killed",
                "apl_core.data.loader.x_f__mutmut_2": "survived",
                "apl_core.data.loader.x_f__mutmut_3": "timeout",
                "apl_core.data.splits.x_h__mutmut_1": "survived",
                "apl_core.model.xǁBlockǁforward__mutmut_1": "not checked"}
    mutation_scores.report(statuses, mutation_scores.equivalent_mutants(listed))
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines}
    # all, killed, equivalent, left, not checked, score
    assert rows["apl_core.data.loader"] == ["3", "2", "1", "0", "0", "100.0%"]
    assert rows["apl_core.data.splits"] == ["1", "0", "0", "1", "0", "0.0%"]
    assert rows["apl_core.model"] == ["1", "0", "0", "0", "1", "0.0%"]
    assert lines[-1] == (f"warning: {mutation_scores.EQUIVALENT_LIST.name} lists apl_core.report.x_g__mutmut_9, which no "
                         f"longer exists")
