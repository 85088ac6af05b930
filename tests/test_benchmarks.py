"""The throughput benchmark runs end to end on a small model and reports every variant it is
asked for: its numbers are measurements, so only their presence and consistency are checked."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
