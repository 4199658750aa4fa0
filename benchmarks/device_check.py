"""The accelerator check: one command that, on a fresh GPU machine, installs what it lacks,
runs the numerical tests and the step benchmarks against PyTorch on the same device, and
writes one Markdown report and one JSON file.

    # on the GPU machine (Python 3.12, JAX and PyTorch with CUDA, no TensorFlow), wheels from
    # scripts/download_device_wheels.sh carried in .whl/:
    python3 -m benchmarks.device_check --wheels=.whl --out=$OUT
    # here, small sizes on the CPU (the check cannot rot between GPU runs):
    .venv/bin/python -m benchmarks.device_check --cpu --out=/tmp/device_check

Every step is a subprocess with its own time limit, all within `--budget_s` (a step that would
start with less than `--min_step_s` left is skipped and reported as such); what each step
printed goes into the report. The steps:

- `tests`: the numerical tests that matter on a GPU and need no TensorFlow: converted BERT
  against transformers, the per-task gradient paths, the train step on the device against the
  same step on the CPU (`tests/test_device_parity.py`); float32 matmuls at full precision
  (`JAX_DEFAULT_MATMUL_PRECISION=highest`: a GPU's default is TF32);
- `maml_step`: the second-order MAML meta-step, ours against `torch.func` and `higher`;
- `finetune_step`: float32 and bfloat16 (PyTorch under autocast), tokens/s and model FLOPs
  utilisation, for MiniLM and a BERT-base-sized encoder with random weights;
- `mtl_step`: the multi-task step in the `mixed` and `per_task` layouts against PyTorch loops.

Each benchmark prints its compile times. This file imports only the standard library, so it
runs before the wheels are installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
WHEEL_TARGET = "/tmp/mtl_device_wheels"

TESTS = [
    "tests/test_convert.py::test_minilm_matches_transformers_to_1e4",
    "tests/test_convert.py::test_roberta_and_distilbert_match_transformers",
    "tests/test_gradient_methods.py::test_per_task_gradients_are_one_vectorised_pass",
    "tests/test_per_task_batch.py::test_per_task_gradients_match_one_grad_per_task",
    "tests/test_device_parity.py",
]


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    args: list[str]  # after `python -m`
    limit_s: int  # this step's own time limit
    env: dict[str, str] = dataclasses.field(default_factory=dict)


# Peak dense bfloat16 TFLOP/s by GPU name (NVIDIA's data sheets, SXM parts), for model FLOPs
# utilisation; an unknown device gets no MFU column.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}


def peak_tflops(gpu_name: str) -> float:
    """The bfloat16 peak of the GPU that `nvidia-smi` names, or 0 when it is not in the table."""
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu_name.upper()), 0.0)


def steps(cpu: bool, peak: float = 0.0) -> list[Step]:
    """The check's steps: GPU sizes, or (`cpu`) small ones that run in minutes on two cores.

    Steps run in this order while the budget lasts; the profiles come last, so that they use
    only what the timings left.
    """
    full_precision = {"JAX_DEFAULT_MATMUL_PRECISION": "highest"}
    pytest = ["pytest", "-q", "-p", "no:cacheprovider"]
    both = "--precision=float32,bfloat16"
    if cpu:
        small = ["--rounds=1", "--steps=1"]
        return [
            Step("tests", [*pytest, "tests/test_device_parity.py"], 150, full_precision),
            Step("maml_step", ["benchmarks.maml_step", *small, "--peers=torch.func"], 120),
            Step(
                "finetune_step",
                [
                    "benchmarks.finetune_step",
                    *small,
                    "--model=tiny",
                    "--batch_size=4",
                    "--seq_len=32",
                    both,
                ],
                120,
            ),
            Step(
                "mtl_step (mixed)",
                [
                    "benchmarks.mtl_step",
                    *small,
                    "--filters=8",
                    "--num_tasks=2",
                    "--batch_size=8",
                    "--methods=pcgrad",
                ],
                90,
            ),
        ]
    mfu = [f"--peak_tflops={peak}"] if peak else []
    finetune = ["benchmarks.finetune_step", both, *mfu]
    mtl = [
        Step(f"mtl_step ({layout})", ["benchmarks.mtl_step", f"--layout={layout}"], 75)
        for layout in ("mixed", "per_task")
    ]
    return [
        Step("tests", [*pytest, *TESTS], 150, full_precision),
        # Both convolution forms: matmuls are the CPU's choice, cuDNN may win on a GPU.
        Step("maml_step", ["benchmarks.maml_step", both, "--conv=matmul,xla"], 90),
        Step("finetune_step (MiniLM)", finetune, 60),
        Step("finetune_step (BERT-base)", [*finetune, "--model=base"], 90),
        *mtl,
        Step("maml_step profile", ["benchmarks.maml_step", "--rounds=1", "--profile"], 60),
        Step(
            "finetune_step profile (BERT-base bfloat16)",
            [*finetune[:1], "--precision=bfloat16", "--model=base", "--rounds=1", "--profile"],
            60,
        ),
        Step(
            "mtl_step profile (mixed pcgrad)",
            ["benchmarks.mtl_step", "--rounds=1", "--profile=pcgrad"],
            60,
        ),
    ]


def install_wheels(folder: str) -> str:
    """Installs every wheel in `folder` into a private target (on PYTHONPATH for the steps)."""
    wheels = sorted(str(p) for p in pathlib.Path(folder).glob("*.whl"))
    if not wheels:
        return f"no wheels in {folder}"
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    command += ["--no-compile", "--upgrade", "--target", WHEEL_TARGET, *wheels]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise SystemExit(f"Installing the wheels failed:\n{done.stderr[-3000:]}")
    return f"{len(wheels)} wheels from {folder} into {WHEEL_TARGET}"


def header(env: dict[str, str]) -> dict[str, str]:
    """The device, driver and library versions, as the steps' Python sees them."""
    code = (
        "import importlib.metadata as m, json, jax\n"
        "names = ['jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'torch', "
        "'transformers', 'numpy']\n"
        "versions = {}\n"
        "for n in names:\n"
        "    try: versions[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: versions[n] = 'not installed'\n"
        "d = jax.devices()[0]\n"
        "print(json.dumps({'jax device': f'{d.platform}: {d.device_kind} x {jax.device_count()}',"
        " **versions}))\n"
    )
    info = {"python": platform.python_version(), "host": platform.node()}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode == 0:
        info |= json.loads(done.stdout.strip().splitlines()[-1])
    else:
        info["jax"] = f"failed to import: {done.stderr.strip().splitlines()[-1:]}"
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        info["nvidia-smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (FileNotFoundError, subprocess.TimeoutExpired):
        info["nvidia-smi"] = "none"
    return info


def run_step(step: Step, env: dict[str, str], limit_s: float) -> dict:
    """Runs one step; its exit code, seconds and output (code 124: stopped at its limit)."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", *step.args],
            cwd=REPO,
            env={**env, **step.env},
            capture_output=True,
            text=True,
            timeout=limit_s,
        )
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        code = 124
        output = _text(e.stdout) + _text(e.stderr) + f"\n(stopped at its {limit_s:.0f} s limit)"
    return {
        "name": step.name,
        "command": "python -m " + " ".join(step.args),
        "exit_code": code,
        "seconds": round(time.monotonic() - started, 1),
        "output": _results(output),
    }


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _results(output: str, keep: int = 60) -> str:
    """The lines that carry results: no absl INFO lines, the last `keep` of the rest."""
    lines = [line for line in output.splitlines() if not re.match(r"^[IW]\d{4} ", line)]
    return "\n".join(lines[-keep:])


def report(info: dict, results: list[dict], budget_s: float, cpu: bool) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"# Device check{' (CPU mode)' if cpu else ''}, {when}",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in info.items()),
        f"| budget | {budget_s:.0f} s |",
        "",
        "| step | exit code | seconds |",
        "| --- | --- | --- |",
        *(f"| {r['name']} | {r['exit_code']} | {r['seconds']} |" for r in results),
    ]
    for r in results:
        lines += ["", f"## {r['name']}", "", f"`{r['command']}`", "", "```", r["output"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="Folder for the report and JSON file.")
    parser.add_argument("--wheels", default="", help="Folder of wheels to install first.")
    parser.add_argument("--cpu", action="store_true", help="Small sizes on the CPU.")
    parser.add_argument("--budget_s", type=float, default=420, help="Time for all steps.")
    parser.add_argument("--min_step_s", type=float, default=20, help="Skip below this.")
    parser.add_argument("--only", default="", help="Comma-separated step names to run.")
    args = parser.parse_args(argv)
    started = time.monotonic()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    # transformers' load reports and progress bars would push the results out of the report.
    env |= {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    if args.cpu:
        env |= {"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    installed = install_wheels(args.wheels) if args.wheels else "none asked for"
    if args.wheels:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [WHEEL_TARGET, env.get("PYTHONPATH")]))
    info = {"wheels": installed, **header(env)}
    peak = 0.0 if args.cpu else peak_tflops(info.get("nvidia-smi", ""))
    chosen = [s for s in steps(args.cpu, peak) if not args.only or s.name in args.only.split(",")]
    results = []
    for step in chosen:
        left = args.budget_s - (time.monotonic() - started)
        if left < args.min_step_s:
            results.append(
                dict(
                    name=step.name,
                    command="",
                    exit_code="skipped",
                    seconds=0,
                    output=f"skipped: {left:.0f} s of the budget left",
                )
            )
            continue
        results.append(run_step(step, env, min(step.limit_s, left)))
        print(
            f"{step.name}: exit {results[-1]['exit_code']} in {results[-1]['seconds']} s",
            flush=True,
        )
    text = report(info, results, args.budget_s, args.cpu)
    (out / "device_check.md").write_text(text)
    (out / "device_check.json").write_text(json.dumps({"info": info, "steps": results}, indent=2))
    print(text)
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
