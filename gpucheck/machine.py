"""Is there an NVIDIA GPU here, and what is this machine (for the report's header)?

Nothing here creates a CUDA context: nvidia-smi is asked first, CuPy only when nvidia-smi is
missing or sees nothing (the steps then own the GPU alone).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

SMI_QUERY = "name,driver_version,memory.total,compute_cap"
PACKAGES = ("cupy-cuda13x", "cupy-cuda12x", "torch", "numpy", "onnx", "onnxruntime")


@dataclass
class Gpu:
    present: bool
    description: str  # the cards (nvidia-smi), or why none was found


def nvidia_smi() -> tuple[list[str], str]:
    """One line per GPU (name, driver, memory, compute capability), or none and the reason."""
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={SMI_QUERY}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
    except FileNotFoundError:
        return [], "nvidia-smi not found"
    except subprocess.TimeoutExpired:
        return [], "nvidia-smi did not answer in 30 s"
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        reason = (done.stderr or done.stdout).strip().splitlines()
        return [], f"nvidia-smi exit {done.returncode}: {reason[-1] if reason else 'no GPU'}"
    return lines, ""


def cupy_devices() -> tuple[int, str]:
    """How many devices CuPy sees, or 0 and the reason."""
    from engine.backends.cupy_backend import import_cupy
    from engine.errors import DeviceUnavailableError

    try:
        return import_cupy().cuda.runtime.getDeviceCount(), ""
    except DeviceUnavailableError as error:
        return 0, str(error)


def detect() -> Gpu:
    cards, smi_reason = nvidia_smi()
    if cards:
        return Gpu(True, "; ".join(f"{card} (name, driver, memory, compute capability)"
                                   for card in cards))  # fmt: skip
    count, cupy_reason = cupy_devices()
    if count:
        return Gpu(True, f"{count} device(s) seen by CuPy ({smi_reason})")
    return Gpu(False, f"{smi_reason}; CuPy: {cupy_reason}")


def versions() -> str:
    """Installed versions of the packages the GPU path and its peers use."""
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def cpu() -> str:
    model = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    match = re.search(r"^model name\s*:\s*(.*)$", text, re.MULTILINE)
    return f"{match.group(1) if match else model}, {os.cpu_count()} logical cores"


def commit(repo: Path) -> str:
    """The checked-out commit, plus "(modified)" when the tree differs; "unknown" without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo,
                              capture_output=True, text=True, timeout=10)  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=repo, capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown (no git history here)"
    return head.stdout.strip() + (" (modified)" if dirty.stdout.strip() else "")


def describe(gpu: Gpu, repo: Path) -> list[str]:
    """The report's header lines."""
    return [
        f"- GPU: {gpu.description}",
        f"- CPU: {cpu()}; load average {os.getloadavg()[0]:.2f} at the start",
        f"- Python {platform.python_version()}; {versions()}",
        f"- commit: {commit(repo)}",
    ]
