"""The accelerator check (`benchmarks/device_check.py`) in its CPU mode, so that it cannot rot
between GPU runs: every step runs and the report and JSON file carry the results."""

import json
import subprocess
import sys

from benchmarks import device_check
from tests.conftest import REPO

# The "tests" step runs tests/test_device_parity.py, which the suite runs on its own.
TIMED = "maml_step,finetune_step,mtl_step (mixed)"


def test_cpu_mode_runs_every_timed_step_and_writes_the_report(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.device_check",
            "--cpu",
            f"--out={tmp_path}",
            f"--only={TIMED}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "device_check.json").read_text())
    assert record["info"]["jax device"].startswith("cpu")
    assert record["info"]["jax"] and record["info"]["torch"] != "not installed"
    names = [s["name"] for s in record["steps"]]
    assert names == TIMED.split(",")
    assert [s.name for s in device_check.steps(cpu=True)] == ["tests", *names]
    assert all(s["exit_code"] == 0 for s in record["steps"])
    outputs = {s["name"]: s["output"] for s in record["steps"]}
    assert "fastest peer" in outputs["maml_step"]  # the ratio line
    assert "ratio bfloat16" in outputs["finetune_step"] and "compile" in outputs["finetune_step"]
    assert "| pcgrad |" in outputs["mtl_step (mixed)"]
    report = (tmp_path / "device_check.md").read_text()
    assert report.startswith("# Device check (CPU mode)") and "| jax device | cpu" in report


def test_steps_past_the_budget_are_reported_as_skipped(tmp_path):
    code = device_check.main(["--cpu", f"--out={tmp_path}", "--budget_s=0"])
    assert code == 1  # nothing ran, so the check did not pass
    record = json.loads((tmp_path / "device_check.json").read_text())
    assert {s["exit_code"] for s in record["steps"]} == {"skipped"}


def test_gpu_steps_name_real_modules_and_fit_the_budget():
    gpu = device_check.steps(cpu=False, peak=device_check.peak_tflops("NVIDIA H200"))
    assert len({s.name for s in gpu}) == len(gpu)
    assert all("," not in s.name for s in gpu)  # `--only` splits on commas
    finetune = next(s for s in gpu if s.name == "finetune_step (BERT-base)")
    assert "--peak_tflops=989.0" in finetune.args
    timed = [s for s in gpu if "profile" not in s.name]
    assert sum(s.limit_s for s in timed) <= 600  # one device call
    for step in gpu:
        module = step.args[0]
        assert module == "pytest" or (REPO / (module.replace(".", "/") + ".py")).is_file()
    assert device_check.peak_tflops("Some Other GPU") == 0.0
