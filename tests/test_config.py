import json

import pytest

from apl_core.config import (PROFILES, FinetuneConfig, PretrainConfig, profile_config,
                             profile_npcs)


def test_defaults_are_the_paper_settings():
    config = PretrainConfig()
    assert (config.image_size, config.grid, config.crop) == (96, 7, 1)
    assert (config.token_dim, config.num_tokens) == (432, 49)
    assert (config.blocks, config.heads, config.hidden_mult) == (4, 16, 3)
    assert (config.lr, config.batch_size, config.epochs) == (1.15e-3, 1024, 300)
    assert (config.patch_dropout, config.dropout, config.warmup_frac) == (0.1, 0.15, 0.05)
    tune = FinetuneConfig()
    assert (tune.lr, tune.weight_decay, tune.epochs, tune.npc) == (5e-4, 1e-4, 30, 500)
    assert (tune.warmup_frac, tune.eval_every, tune.label_seed) == (0.1, 2, 42)
    assert tune.benchmark


@pytest.mark.parametrize("field,value,message", [
    ("grid", 0, "1 <= G <= image_size"),
    ("grid", 97, "1 <= G <= image_size"),
    ("crop", 13, "0 <= K < image_size // grid = 96 // 7 = 13"),
    ("crop", -1, "0 <= K"),
    ("heads", 5, "head counts that would: .*16"),
    ("patch_dropout", 1.0, r"\[0, 1\)"),
    ("patch_dropout", -0.1, r"\[0, 1\)"),
    ("dropout", 1.5, r"\[0, 1\)"),
    ("batch_size", 0, "positive integer"),
    ("epochs", -3, "positive integer"),
    ("image_size", 0, "positive integer"),
    ("lr", 0.0, "> 0"),
    ("lr", -1e-3, "> 0"),
    ("weight_decay", -1.0, ">= 0"),
    ("encoder", "vit", "flatten"),
    ("dataset", "imagenet", "stl10"),
    ("optimizer", "sgd", "adam"),
    ("precision", "fp8", "bf16"),
    ("device", "tpu", "cuda"),
    ("warmup_frac", 1.0, r"\[0, 1\)"),
    ("blocks", 0, "positive integer"),
    ("unreadable_images", "sometimes", "choose 'skip' or 'error'"),
])
def test_invalid_values_name_field_value_and_what_is_allowed(field, value, message):
    with pytest.raises(ValueError, match=message) as error:
        PretrainConfig(**{field: value})
    assert f"{field}={value!r}" in str(error.value)


def test_heads_message_lists_divisors_of_the_token_dimension():
    with pytest.raises(ValueError) as error:
        PretrainConfig(image_size=48, grid=4, crop=1, heads=4)  # D = 363 = 3 * 11^2
    assert "D = 363" in str(error.value) and "[1, 3, 11, 33]" in str(error.value)


@pytest.mark.parametrize("field,value", [
    ("npc", 0), ("eval_every", 0), ("model", "vgg"), ("dropout", 1.0), ("test_per_class", -1),
])
def test_invalid_finetune_values(field, value):
    with pytest.raises(ValueError, match=field):
        FinetuneConfig(**{field: value})


def test_baselines_refuse_pretrained_options():
    with pytest.raises(ValueError, match="from scratch"):
        FinetuneConfig(model="s-cnn", head_only=True)


def test_round_trip_through_plain_dicts_and_json():
    config = PretrainConfig(grid=8, crop=0, heads=8, lr=2e-3, mlp_head=True)
    again = PretrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    tune = FinetuneConfig(npc=20, architecture={"grid": 4, "crop": 1, "heads": 3}, image_size=48)
    assert FinetuneConfig.from_dict(json.loads(json.dumps(tune.to_dict()))) == tune


def test_from_dict_refuses_unknown_keys_and_wrong_types():
    with pytest.raises(ValueError, match="unknown PretrainConfig option.*'gird'"):
        PretrainConfig.from_dict({"gird": 7})
    with pytest.raises(ValueError, match="grid='7' is invalid: expected int"):
        PretrainConfig.from_dict({"grid": "7"})
    assert PretrainConfig.from_dict({"lr": 1}).lr == 1.0  # an int is a fine float


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_builds_valid_configs(profile):
    assert isinstance(profile_config(profile, "pretrain"), PretrainConfig)
    assert isinstance(profile_config(profile, "finetune"), FinetuneConfig)
    probe = profile_config(profile, "probe")
    assert probe.head_only and not profile_config(profile, "finetune").head_only
    assert list(profile_npcs(profile)) == sorted(profile_npcs(profile))
    with pytest.raises(ValueError, match="profile"):
        profile_config("huge", "pretrain")


def test_gpu_profile_is_the_paper_model_on_the_embedded_data():
    paper, gpu = profile_config("paper", "pretrain"), profile_config("gpu", "pretrain")
    for field in ("image_size", "grid", "crop", "heads", "blocks", "hidden_mult", "lr",
                  "batch_size", "dropout", "patch_dropout"):
        assert getattr(gpu, field) == getattr(paper, field), field
    assert (paper.dataset, gpu.dataset) == ("stl10", "synthetic")
    assert profile_npcs("gpu") == profile_npcs("paper")


def test_quick_probe_keeps_the_finetuning_schedule_but_its_own_lr():
    finetune, probe = profile_config("quick", "finetune"), profile_config("quick", "probe")
    assert probe.lr != finetune.lr
    assert probe.replace(lr=finetune.lr, head_only=False) == finetune


def test_both_unreadable_image_policies_are_accepted():
    assert PretrainConfig(unreadable_images="error").unreadable_images == "error"
    assert FinetuneConfig(unreadable_images="skip").unreadable_images == "skip"
