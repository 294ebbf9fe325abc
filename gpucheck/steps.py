"""The steps of ``make gpu-check``, in the order they run, each with its own time limit.

The limits add up to ``BUDGET_S`` (9 minutes), so that the whole check fits one 10-minute
command on a lent GPU machine with time left to start and to copy results back. The order puts
what proves correctness first (tests, cross-check), then speed (autotuner, benchmark, service).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGET_S = 540
WHEELHOUSE = REPO / "gpu-wheelhouse"
REQUIREMENTS = Path(__file__).resolve().parent / "wheelhouse.txt"
#: modules the service imports that a GPU machine's own Python may lack (the wheelhouse's)
SERVICE_MODULES = ("fastapi", "starlette", "uvicorn", "httptools", "pydantic", "pydantic_settings",
                   "multipart")  # fmt: skip
CIFAR_BATCHES = "1,8,32,128"
RESNET_BATCHES = "1,32"


@dataclass
class Step:
    """One command of the check. ``highlight``: a regex of log lines worth quoting in the report
    (Markdown table rows are always quoted); ``paths``: files the command reads (the dry run
    checks they exist); ``optional``: files it uses when present (the dry run says whether they
    are); ``env``: extra environment variables."""

    name: str
    title: str
    argv: list[str]
    timeout_s: float
    highlight: str = r"$^"
    paths: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    optional: list[Path] = field(default_factory=list)

    @property
    def module(self) -> str | None:
        """The module the command runs with ``python -m``, if it does."""
        return self.argv[self.argv.index("-m") + 1] if "-m" in self.argv else None

    def shell(self) -> str:
        """The command line as a person would type it (environment first)."""
        env = [f"{k}={v}" for k, v in self.env.items()]
        return " ".join([*env, *self.argv]).replace(sys.executable, "python")


def environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment with ``extra`` added; a ``PYTHONPATH`` in ``extra`` goes in
    front of the one already set, output is unbuffered (a step stopped at its limit still leaves
    everything it printed in its log)."""
    env = {**os.environ, **extra, "PYTHONUNBUFFERED": "1"}
    if "PYTHONPATH" in extra and os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join([extra["PYTHONPATH"], os.environ["PYTHONPATH"]])
    return env


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def plan(workdir: Path, wheelhouse: Path = WHEELHOUSE) -> list[Step]:
    """Every step, reading and writing scratch files under ``workdir``."""
    site, cifar, cache = workdir / "site", workdir / "cifar.onnx", workdir / "cifar.autotune.json"
    return [
        Step("service-packages", "the service's packages from the wheelhouse",
             python("-m", "gpucheck.packages", "--wheelhouse", str(wheelhouse), "--target",
                    str(site)), 20, r"^(installed|already|missing)", [REQUIREMENTS],
             optional=[wheelhouse]),
        Step("gpu-tests", "the gpu-marked tests",
             python("-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider", "tests/engine"),
             90, r"^(=+ .* in [\d.]+s|FAILED|ERROR)", [REPO / "tests" / "engine"]),
        Step("crosscheck", "CUDA engine vs NumPy engine: bench nets and ONNX conformance",
             python("-m", "gpucheck.crosscheck", "--device", "cuda", "--workdir",
                    str(workdir / "crosscheck")), 110, r"^(checked|conformance|cross-check|- )"),
        Step("autotune", "the autotuner on CUDA, CIFAR-style net",
             python("-m", "engine.autotune", str(cifar), "--device", "cuda", "--batch-sizes",
                    CIFAR_BATCHES, "--cache", str(cache)), 40, r".",
             [cifar]),
        Step("bench-cifar", "engine vs PyTorch cudnn.benchmark, CIFAR-style net",
             python("-m", "engine.bench", "--device", "cuda", "--nets", "cifar", "--batch-sizes",
                    CIFAR_BATCHES, "--cache", str(cache), "--min-time-s", "1"), 100,
             r"^(GPU:|cuBLAS|Machine|cifar batch)"),
        Step("bench-resnet18", "engine vs PyTorch cudnn.benchmark, ResNet-18",
             python("-m", "engine.bench", "--device", "cuda", "--nets", "resnet18",
                    "--batch-sizes", RESNET_BATCHES, "--min-time-s", "1"), 80,
             r"^(resnet18 batch)"),
        Step("service-load", "the service on --device cuda under load, batching vs batch 1",
             python("-m", "loadtests.compare_servers", "--device", "cuda", "--only",
                    "gemmserve --workers 2", "gemmserve --max-batch-size 1",
                    "--seconds", "8", "--warmup-s", "2"), 100, r"^(Machine|Load)",
             env={"PYTHONPATH": str(site)}),
    ]  # fmt: skip
