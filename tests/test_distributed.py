"""Several processes with torchrun on this CPU (gloo): the same run as one process, written once,
resumable, and stopping with an error when a rank dies."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).parent / "scripts"
pytestmark = pytest.mark.slow
SMOKE = ["--profile", "smoke", "--device", "cpu", "--num-images", "640", "--holdout-images",
         "128", "--batch-size", "64", "--run-name", "ddp"]


def torchrun(*args: str, timeout: float = 240, **popen) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", *args]
    env = {**os.environ, "APL_DIST_TIMEOUT": "60", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                          **popen)


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_averaged_gradients_equal_one_process_on_the_same_global_batch(tmp_path):
    sys.path.insert(0, str(SCRIPTS))
    from ddp_gradients import first_global_batch_gradients

    done = torchrun(str(SCRIPTS / "ddp_gradients.py"), str(tmp_path / "grads.pt"))
    assert done.returncode == 0, done.stderr[-3000:]
    distributed = torch.load(tmp_path / "grads.pt", weights_only=True)
    single = first_global_batch_gradients()
    assert distributed.keys() == single.keys()
    for name, gradient in single.items():
        torch.testing.assert_close(distributed[name], gradient, atol=1e-5, rtol=1e-4, msg=name)


def test_two_process_pretraining_writes_one_run_resumes_and_fine_tunes(tmp_path):
    first = torchrun("-m", "apl_core", "pretrain", *SMOKE, "--epochs", "1",
                     "--runs-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    runs = list((tmp_path / "pretrain").iterdir())
    assert [r.name for r in runs] == ["ddp"]
    rows = metrics_rows(runs[0])
    assert [r["epoch"] for r in rows] == [1]  # rank 1 wrote nothing
    assert rows[0]["val_top1"] > 0
    assert torch.load(runs[0] / "last.pt", weights_only=True)["epoch"] == 1

    resumed = torchrun("-m", "apl_core", "pretrain", *SMOKE, "--epochs", "2", "--resume",
                       "--runs-dir", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["epoch"] for r in metrics_rows(runs[0])] == [1, 2]
    assert torch.load(runs[0] / "last.pt", weights_only=True)["epoch"] == 2

    tuned = torchrun("-m", "apl_core", "finetune", "--profile", "smoke", "--device", "cpu",
                     "--pretrained", "ddp", "--runs-dir", str(tmp_path), "--run-name", "tuned")
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    rows = metrics_rows(tmp_path / "finetune" / "tuned")
    assert [r["epoch"] for r in rows] == [1, 2] and 0 <= rows[-1]["test_top1"] <= 1


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_killing_one_rank_stops_the_whole_run_with_an_error(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "apl_core", "pretrain", *SMOKE,
               "--epochs", "50", "--runs-dir", str(tmp_path)]
    env = {**os.environ, "APL_DIST_TIMEOUT": "30", "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "pretrain" / "ddp" / "last.pt").exists():
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the 2-process run saved no checkpoint"
            time.sleep(0.2)
        ranks = _children(launcher.pid)
        assert len(ranks) == 2
        os.kill(ranks[1], signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=90)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert "ChildFailedError" in stderr or "Signal 9" in stderr or "SIGKILL" in stderr
    # the checkpoint saved before the failure is intact
    assert torch.load(tmp_path / "pretrain" / "ddp" / "last.pt", weights_only=True)["epoch"] >= 1
