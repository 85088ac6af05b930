"""The study scripts of experiments/: what their results files record about the run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from apl_core import controls

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import controls_seeds  # noqa: E402


def test_the_controls_header_records_the_budget_the_controls_ran_at(tmp_path, monkeypatch):
    """--budget main pretrains every control as long as the profile's own pretraining: the
    header says so (images and epochs), beside the grids and crops the profile tries."""
    ran = []
    monkeypatch.setattr(controls, "run_controls", lambda profile, seed, names, budget, **kw:
                        ran.append((seed, budget)) or [{"control": "APL", "run_dir": "x"}])
    monkeypatch.setattr(controls, "border_reliance", lambda rows, device: [])
    monkeypatch.setattr(controls, "labelled_sets", lambda profile, seed: type(
        "Sets", (), {"test": (None, [0] * 10)})())
    for table in ("control_table", "verdict_table", "border_table"):
        monkeypatch.setattr(controls, table, lambda *args: [])
    monkeypatch.setattr(controls_seeds, "markdown_table", lambda rows: "")
    for budget, expected in (("main", {"num_images": 12_500, "epochs": 12}),
                             ("small", {"num_images": 4000, "epochs": 4})):
        out = tmp_path / f"{budget}.json"
        controls_seeds.main(["--profile", "quick", "--seeds", "0", "1", "--budget", budget,
                             "--device", "cpu", "--out", str(out)])
        written = json.loads(out.read_text())
        assert written["budget"] == budget
        assert written["controls"] == {"budget": expected, "grids": [3, 4, 6],
                                       "crops": [0, 1, 2]}
        assert [s["seed"] for s in written["seeds"]] == [0, 1]
        assert written["seeds"][0]["rows"] == [{"control": "APL"}]  # no run folder kept
    assert ran == [(0, "main"), (1, "main"), (0, "small"), (1, "small")]
