import json

import pytest

from apl_core.config import (ARCHITECTURE_FIELDS, PRETEXT_POSITIONS, PROFILES, FinetuneConfig,
                             PretrainConfig, profile_config, profile_npcs, profile_values)


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


GRID_RULE = "G must satisfy 1 <= G <= image_size (96)"
CROP_RULE = "K must satisfy 0 <= K < image_size // grid = 96 // 7 = 13"


# The message is `field=value is invalid: ` and what the field allows, which ends it.
@pytest.mark.parametrize("field,value,allowed", [
    ("grid", 0, GRID_RULE),
    ("grid", 97, GRID_RULE),
    ("grid", 7.0, GRID_RULE),
    ("crop", 13, CROP_RULE),
    ("crop", -1, CROP_RULE),
    ("crop", 1.0, CROP_RULE),
    ("patch_dropout", 1.0, "PatchDropout p must be in [0, 1)"),
    ("patch_dropout", -0.1, "PatchDropout p must be in [0, 1)"),
    ("dropout", 1.0, "must be in [0, 1)"),
    ("dropout", -0.1, "must be in [0, 1)"),
    ("batch_size", 0, "must be a positive integer"),
    ("epochs", -3, "must be a positive integer"),
    ("epochs", True, "must be a positive integer"),
    ("image_size", 0, "must be a positive integer"),
    ("image_size", 96.0, "must be a positive integer"),
    ("blocks", 0, "must be a positive integer"),
    ("hidden_mult", 0, "must be a positive integer"),
    ("heads", 0, "must be a positive integer"),
    ("lr", 0.0, "the learning rate must be > 0"),
    ("lr", -1e-3, "the learning rate must be > 0"),
    ("weight_decay", -1.0, "must be >= 0"),
    ("unreadable_images", "sometimes", "choose 'skip' or 'error'"),
    ("warmup_frac", 1.0, "must be in [0, 1)"),
    ("warmup_frac", -0.1, "must be in [0, 1)"),
    ("warmup_start", 0.0, "must be in (0, 1]"),
    ("warmup_start", 1.5, "must be in (0, 1]"),
    ("final_lr_frac", -0.1, "must be in [0, 1]"),
    ("final_lr_frac", 1.1, "must be in [0, 1]"),
    ("grad_clip", -1.0, "must be >= 0 (0 disables clipping)"),
    ("num_images", -1, "must be >= 0 (0: the whole split)"),
    ("holdout_images", -1, "must be >= 0"),
    ("crop_scale", 0.0, "must be in (0, 1]"),
    ("crop_scale", 1.5, "must be in (0, 1]"),
    ("knn_every", -1, "must be >= 0 (0: never)"),
    ("dataset", "imagenet", "choose one of ('stl10', 'synthetic', 'folder')"),
    ("optimizer", "rmsprop", "choose one of ('adam', 'adamw', 'sgd')"),
    ("precision", "fp8", "choose one of ('auto', 'fp32', 'bf16', 'fp16')"),
    ("encoder", "vit", "choose one of ('flatten', 'cnn', 'resnet18')"),
    ("attention_scale", "sqrt", "choose one of ('standard', 'original')"),
    ("device", "tpu", "use 'auto', 'cpu', 'cuda' or 'cuda:N'"),
])
def test_invalid_values_name_field_value_and_what_is_allowed(field, value, allowed):
    with pytest.raises(ValueError) as error:
        PretrainConfig(**{field: value})
    assert str(error.value) == f"{field}={value!r} is invalid: {allowed}"


@pytest.mark.parametrize("values", [
    dict(weight_decay=0.0, warmup_frac=0.0, warmup_start=1.0, final_lr_frac=0.0, grad_clip=0.0),
    dict(final_lr_frac=1.0, num_images=0, holdout_images=0, knn_every=0, crop_scale=1.0),
    dict(dropout=0.0, patch_dropout=0.0, blocks=1, hidden_mult=1, epochs=1, batch_size=1),
    dict(grid=1, crop=95, heads=1),  # one patch, cropped to a single pixel
    dict(grid=96, crop=0, heads=3),  # one pixel per patch
    dict(image_size=1, grid=1, crop=0, heads=1),
    dict(device="cpu"), dict(device="cuda"), dict(device="cuda:1"), dict(device="auto"),
    dict(optimizer="adamw", precision="fp16", dataset="folder", encoder="cnn", heads=4),
])
def test_values_on_the_edge_of_the_allowed_ranges_are_accepted(values):
    config = PretrainConfig(**values)
    assert {name: getattr(config, name) for name in values} == values


def test_token_dimension_of_each_encoder():
    """flatten: the cropped patch's pixels, 3 (P - K)^2; the CNN and ResNet-18 encoders: their
    channel counts, whatever the patch size."""
    assert PretrainConfig(image_size=32, grid=4, crop=1, heads=3).token_dim == 3 * 7**2
    for encoder, dim in (("cnn", 128), ("resnet18", 512)):
        for size, grid, crop in ((96, 7, 1), (32, 4, 0)):
            config = PretrainConfig(image_size=size, grid=grid, crop=crop, encoder=encoder,
                                    heads=4)
            assert config.token_dim == dim, (encoder, size)


@pytest.mark.parametrize("size,grid,crop,dim,suggested", [
    (48, 4, 1, 363, [1, 3, 11, 33]),  # 3 x 11^2
    (96, 7, 1, 432, [1, 2, 3, 4, 6, 8, 9, 12, 16, 18, 24, 27, 36, 48, 54]),
    (32, 4, 0, 192, [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]),  # up to 64 heads
    (66, 1, 1, 12675, [1, 3, 5, 13, 15, 25, 39]),  # 65 divides D but is not suggested
])
def test_heads_message_suggests_head_counts_up_to_64_that_divide_the_token_dimension(
        size, grid, crop, dim, suggested):
    with pytest.raises(ValueError) as error:
        PretrainConfig(image_size=size, grid=grid, crop=crop, heads=2 if dim % 2 else 5)
    assert str(error.value).endswith(
        f"must divide the token dimension D = {dim}; head counts that would: {suggested}")


@pytest.mark.parametrize("field,value,allowed", [
    ("npc", 0, "must be a positive integer"),
    ("npc", 2.5, "must be a positive integer"),
    ("eval_every", 0, "must be a positive integer"),
    ("num_classes", 0, "must be a positive integer"),
    ("model", "vgg", "choose one of ('apl', 's-cnn', 's-resnet')"),
    ("dropout", 1.0, "must be in [0, 1)"),
    ("dropout", -0.1, "must be in [0, 1)"),
    ("patch_dropout", 1.0, "PatchDropout p must be in [0, 1)"),
    ("patch_dropout", -0.1, "PatchDropout p must be in [0, 1)"),
    ("val_per_class", -1, "must be >= 0"),
    ("test_per_class", -1, "must be >= 0"),
    ("crop_scale", 0.0, "must be in (0, 1]"),
    ("crop_scale", 1.5, "must be in (0, 1]"),
    ("select_best", True,
     "selecting on validation needs a validation part: set val_per_class > 0"),
    ("label_smoothing", 1.0, "must be in [0, 1)"),
    ("label_smoothing", -0.1, "must be in [0, 1)"),
    ("mixup_alpha", -0.1, "must be >= 0 (0: off)"),
    ("cutmix_alpha", -1.0, "must be >= 0 (0: off)"),
    ("augment_policy", "autoaugment",
     "choose one of ('none', 'trivialaugment', 'randaugment')"),
    ("drop_path", 1.0, "must be in [0, 1)"),
    ("drop_path", -0.1, "must be in [0, 1)"),
])
def test_invalid_finetune_values(field, value, allowed):
    with pytest.raises(ValueError) as error:
        FinetuneConfig(**{field: value})
    assert str(error.value) == f"{field}={value!r} is invalid: {allowed}"


def test_finetune_values_on_the_edge_are_accepted():
    edge = dict(npc=1, eval_every=1, num_classes=1, dropout=0.0, patch_dropout=0.0,
                val_per_class=0, test_per_class=0, crop_scale=1.0, label_smoothing=0.0,
                mixup_alpha=0.0, cutmix_alpha=0.0, drop_path=0.0)
    config = FinetuneConfig(**edge)
    assert {name: getattr(config, name) for name in edge} == edge
    assert FinetuneConfig(select_best=True, val_per_class=1).select_best
    assert not FinetuneConfig(model="s-resnet").benchmark


@pytest.mark.parametrize("option", [dict(head_only=True), dict(freeze_encoder=True),
                                    dict(pretrained="runs/pretrain/x"),
                                    dict(positional_embedding=True)])
def test_baselines_refuse_pretrained_options(option):
    for model in ("s-cnn", "s-resnet"):
        with pytest.raises(ValueError, match=f"model='{model}' is invalid: the CNN baselines "
                                             "train from scratch: pretrained, head_only, "
                                             "freeze_encoder and positional_embedding apply to "
                                             "model='apl' only"):
            FinetuneConfig(model=model, **option)
    assert FinetuneConfig(model="apl", **option).model == "apl"


def test_the_small_data_regularisation_is_off_by_default_and_takes_its_values():
    config = FinetuneConfig()
    assert (config.label_smoothing, config.mixup_alpha, config.cutmix_alpha,
            config.augment_policy, config.drop_path) == (0.0, 0.0, 0.0, "none", 0.0)
    small_data = dict(label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0,
                      augment_policy="randaugment", drop_path=0.1)
    config = FinetuneConfig(**small_data)
    assert {name: getattr(config, name) for name in small_data} == small_data
    assert FinetuneConfig(label_smoothing=0.999, drop_path=0.999).drop_path == 0.999
    for policy in ("none", "trivialaugment", "randaugment"):
        assert FinetuneConfig(model="s-cnn", augment_policy=policy).augment_policy == policy


@pytest.mark.parametrize("model", ["s-cnn", "s-resnet"])
def test_stochastic_depth_is_refused_for_the_cnns_and_the_rest_of_the_recipe_is_not(model):
    with pytest.raises(ValueError) as error:
        FinetuneConfig(model=model, drop_path=0.1)
    assert str(error.value) == (
        f"drop_path=0.1 is invalid: stochastic depth drops transformer blocks: the CNN "
        f"baselines have none; use drop_path=0 with model='{model}'")
    config = FinetuneConfig(model=model, label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0,
                            augment_policy="trivialaugment")
    assert config.drop_path == 0.0 and config.mixup_alpha == 0.8


def test_architecture_errors_name_the_key_or_the_field():
    with pytest.raises(ValueError, match=r"architecture=\{'gird': 4, 'crop': 1\} is invalid: "
                                         r"unknown keys \['gird'\]; known: \['grid', 'crop'"):
        FinetuneConfig(architecture={"gird": 4, "crop": 1})
    # the architecture is checked as a pretraining config of the same image size would be
    with pytest.raises(ValueError, match="heads=5 is invalid: must divide the token dimension"):
        FinetuneConfig(image_size=48, architecture={"grid": 4, "crop": 1, "heads": 5})
    with pytest.raises(ValueError, match="grid=50 is invalid.*image_size \\(48\\)"):
        FinetuneConfig(image_size=48, architecture={"grid": 50})


def test_round_trip_through_plain_dicts_and_json():
    config = PretrainConfig(grid=8, crop=0, heads=8, lr=2e-3, mlp_head=True)
    again = PretrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    tune = FinetuneConfig(npc=20, architecture={"grid": 4, "crop": 1, "heads": 3}, image_size=48)
    assert FinetuneConfig.from_dict(json.loads(json.dumps(tune.to_dict()))) == tune


def test_from_dict_refuses_unknown_keys_and_wrong_types():
    with pytest.raises(ValueError, match=r"unknown PretrainConfig option\(s\) \['gird'\]; "
                                         r"known options: \[.*'grid'"):
        PretrainConfig.from_dict({"gird": 7, "grid": 7})
    with pytest.raises(ValueError, match="unknown FinetuneConfig option.*'knn_every'"):
        FinetuneConfig.from_dict({"knn_every": 1})
    for field, value, wrong in (("grid", "7", "str"), ("grid", 7.0, "float"),
                                ("grid", True, "bool"), ("lr", True, "bool"),
                                ("lr", "1e-3", "str"), ("dataset", 1, "int"),
                                ("mlp_head", 1, "int")):
        expected = {"grid": "int", "lr": "float", "dataset": "str", "mlp_head": "bool"}[field]
        with pytest.raises(ValueError) as error:
            PretrainConfig.from_dict({field: value})
        assert str(error.value) == f"{field}={value!r} is invalid: expected {expected}, got {wrong}"
    lr = PretrainConfig.from_dict({"lr": 1}).lr  # an int is a fine float, stored as one
    assert lr == 1.0 and type(lr) is float
    assert PretrainConfig.from_dict({"lr": 2.5e-3, "mlp_head": True}).mlp_head is True
    architecture = {"grid": 8, "heads": 3}
    tune = FinetuneConfig.from_dict({"architecture": architecture})  # a dict is taken as given
    assert tune.architecture == architecture


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_builds_valid_configs(profile):
    assert isinstance(profile_config(profile, "pretrain"), PretrainConfig)
    assert isinstance(profile_config(profile, "finetune"), FinetuneConfig)
    probe = profile_config(profile, "probe")
    assert probe.head_only and not profile_config(profile, "finetune").head_only
    assert list(profile_npcs(profile)) == sorted(profile_npcs(profile))
    with pytest.raises(ValueError, match="profile"):
        profile_config("huge", "pretrain")


def test_unknown_profile_or_phase_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"profile='huge' is invalid: choose one of "
                                         r"\('paper', 'gpu', 'quick', 'smoke'\)"):
        profile_npcs("huge")
    with pytest.raises(ValueError, match=r"profile='huge' is invalid: choose one of \('paper'"):
        profile_values("huge", "finetune")
    with pytest.raises(ValueError, match=r"phase='train' is invalid: choose one of "
                                         r"\('pretrain', 'finetune', 'probe'\)"):
        profile_values("quick", "train")


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_a_profile_trains_from_scratch_on_its_own_pretraining_architecture(profile):
    pretrain = profile_config(profile, "pretrain")
    for phase in ("finetune", "probe"):
        built = PretrainConfig(image_size=pretrain.image_size,
                               **profile_config(profile, phase).architecture)
        assert ({name: getattr(built, name) for name in ARCHITECTURE_FIELDS}
                == {name: getattr(pretrain, name) for name in ARCHITECTURE_FIELDS}), phase
    assert profile_npcs(profile) == PROFILES[profile]["npcs"]


def test_profile_overrides_win_over_the_profile():
    chosen = {"grid": 8, "crop": 0, "heads": 3}
    config = profile_config("quick", "finetune", architecture=chosen)
    assert config.architecture == chosen
    assert profile_config("smoke", "pretrain", epochs=7).epochs == 7


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


# ---------------------------------------------------------------- the pretext task

def test_the_pretext_is_one_of_the_tasks_and_named_in_the_error():
    with pytest.raises(ValueError, match=r"pretext='jigsaws' is invalid: choose one of "
                                         r"\('apl', 'rotation', 'jigsaw', 'mae', 'mp3'\)"):
        PretrainConfig(pretext="jigsaws")


@pytest.mark.parametrize("task, needed", sorted(PRETEXT_POSITIONS.items()))
def test_each_task_is_refused_without_or_with_the_positional_embedding_it_is_defined_with(
        task, needed):
    assert PretrainConfig(pretext=task, positional_embedding=needed).pretext == task
    with pytest.raises(ValueError, match=f"positional_embedding={not needed} is invalid: "
                                         f"pretext='{task}' is defined "
                                         f"{'with' if needed else 'without'} a positional "
                                         f"embedding: set positional_embedding={needed}"):
        PretrainConfig(pretext=task, positional_embedding=not needed)


def test_apl_takes_a_positional_embedding_or_none():
    """With one it is notebook 06's leak control."""
    assert PretrainConfig(positional_embedding=True).pretext == "apl"
    assert not PretrainConfig().positional_embedding
