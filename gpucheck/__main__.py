"""``python -m gpucheck`` (``make gpu-check``): the whole GPU path proven in one command.

On a machine with an NVIDIA GPU it runs, in order and within 9 minutes in all, each step with its
own limit and verdict, going on after a failure (gpucheck/steps.py): the service's packages from
the wheelhouse, the ``gpu``-marked tests, the CUDA engine against the NumPy engine (bench nets,
graphs on and off, every bucket; the ONNX conformance set), the autotuner on CUDA, the benchmark
against PyTorch with cudnn.benchmark (CIFAR-style net at batch 1, 8, 32, 128; ResNet-18 at 1, 32),
and the service on ``--device cuda`` under load (with and without ``--max-batch-size 1``).
It writes ``gpu-check.md`` and one log per step under ``$OUT`` (else ``gpu-report/``); exit code 1
when a step did not pass.

Without a GPU it says so in one line, checks every step's command line (a dry run through the
same report), and exits 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from gpucheck import machine
from gpucheck.report import render
from gpucheck.run import REPORT_NAME, clear, run_all
from gpucheck.steps import BUDGET_S, REPO, WHEELHOUSE, plan


def parse_args(argv=None) -> argparse.Namespace:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser("python -m gpucheck", description=__doc__, formatter_class=raw)
    parser.add_argument("--out", type=Path, help="report folder (default: $OUT, else gpu-report)")
    parser.add_argument("--dry-run", action="store_true", help="check the commands, run nothing")
    parser.add_argument("--steps", help="comma-separated step names to run (default: all)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="for all steps together")
    parser.add_argument("--wheelhouse", type=Path, default=WHEELHOUSE)
    args = parser.parse_args(argv)
    args.out = args.out or Path(os.environ.get("OUT") or REPO / "gpu-report")
    return args


def select(steps, names: str | None):
    if not names:
        return steps
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = sorted(set(wanted) - {s.name for s in steps})
    if unknown:
        raise SystemExit(f"gpu-check: unknown steps {unknown}; steps: {[s.name for s in steps]}")
    return [s for s in steps if s.name in wanted]


def write_nets(workdir: Path) -> None:
    """The CIFAR-style bench net as a file, for the autotuner step."""
    from engine.bench.nets import cifar_net

    (workdir / "cifar.onnx").write_bytes(cifar_net().SerializeToString())


def main(argv=None) -> int:
    args = parse_args(argv)
    gpu = machine.detect()
    dry = args.dry_run or not gpu.present
    args.out.mkdir(parents=True, exist_ok=True)
    clear(args.out)
    workdir = Path(tempfile.mkdtemp(prefix="gpucheck-"))
    try:
        write_nets(workdir)
        steps = select(plan(workdir, args.wheelhouse), args.steps)
        quiet = lambda line: None  # noqa: E731 - a dry run prints its one line only
        outcomes = run_all(steps, args.out, args.budget_s, dry, print if not dry else quiet)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = args.out / REPORT_NAME
    report.write_text(render(outcomes, machine.describe(gpu, REPO), dry, args.budget_s))
    broken = [o.step.name for o in outcomes if not o.ok]
    if dry:
        reason = "--dry-run" if gpu.present else f"no NVIDIA GPU here ({gpu.description})"
        state = f"; broken: {', '.join(broken)}" if broken else ""
        print(f"gpu-check: {reason}: dry run of {len(outcomes)} steps{state}, report {report}")
        return 1 if broken else 0
    print(f"gpu-check: {len(outcomes) - len(broken)} of {len(outcomes)} steps passed"
          + (f" (not: {', '.join(broken)})" if broken else "") + f"; report {report}")  # fmt: skip
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
