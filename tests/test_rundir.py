"""Run directories: a run's name says what it computes, and a run is never started over
another or resumed from nothing."""
from __future__ import annotations

from apl_core.rundir import run_name
from conftest import SMOKE_ARCHITECTURE, smoke_finetune_config


def test_run_name_changes_with_every_setting_that_changes_the_result(tmp_path):
    pretrained = tmp_path / "pretrain" / "a-run"
    base = smoke_finetune_config("runs", pretrained=str(pretrained))
    name = run_name(base)
    for change in (dict(test_per_class=7), dict(val_per_class=3), dict(crop_scale=0.5),
                   dict(label_seed=1), dict(warmup_frac=0.2), dict(select_best=True,
                   val_per_class=3), dict(architecture={**SMOKE_ARCHITECTURE, "heads": 1})):
        assert run_name(base.replace(**change)) != name, change
    for same in (dict(device="cuda"), dict(runs_dir="elsewhere"), dict(quiet=False),
                 dict(pretrained=str(pretrained / "last.pt")), dict(pretrained="a-run")):
        assert run_name(base.replace(**same)) == name, same


def test_benchmark_run_name_depends_on_its_architecture():
    small = smoke_finetune_config("runs", architecture=SMOKE_ARCHITECTURE)
    wider = small.replace(architecture={**SMOKE_ARCHITECTURE, "blocks": 3})
    assert run_name(small) != run_name(wider)
