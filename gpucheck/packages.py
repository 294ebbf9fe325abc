"""``python -m gpucheck.packages --wheelhouse DIR --target DIR``: the service's packages, offline.

A lent GPU machine has no network and its Python lacks the web stack (fastapi, uvicorn,
pydantic-settings, ...). ``make gpu-wheelhouse`` downloads those wheels (CPython 3.12, manylinux
x86-64) into a folder that travels with the working tree; this installs them with
``pip install --no-index`` into a target folder that the service step puts on ``PYTHONPATH``,
then imports each module from there. Nothing is installed when they are importable already.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

from gpucheck.steps import REQUIREMENTS, SERVICE_MODULES, WHEELHOUSE, environment


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gpucheck.packages", description=__doc__)
    parser.add_argument("--wheelhouse", type=Path, default=WHEELHOUSE)
    parser.add_argument("--target", type=Path, required=True)
    parser.add_argument("--requirements", type=Path, default=REQUIREMENTS)
    parser.add_argument("--modules", default=",".join(SERVICE_MODULES),
                        help="modules that must import afterwards")  # fmt: skip
    args = parser.parse_args(argv)
    args.modules = [m for m in args.modules.split(",") if m]
    return args


def pip_install(wheelhouse: Path, target: Path, requirements: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links",
               str(wheelhouse), "--target", str(target), "--no-compile", "--no-cache-dir",
               "--disable-pip-version-check", "--quiet", "-r", str(requirements)]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True)


def import_from(target: Path, modules: list[str]) -> subprocess.CompletedProcess:
    """Import every module in a fresh interpreter with ``target`` first on the path."""
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)"
    env = environment({"PYTHONPATH": str(target)})
    command = [sys.executable, "-c", code, *modules]
    return subprocess.run(command, capture_output=True, text=True, env=env)


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = [m for m in args.modules if importlib.util.find_spec(m) is None]
    if not missing:
        print(f"already importable here: {', '.join(args.modules)}; nothing installed")
        return 0
    if not args.wheelhouse.is_dir():
        print(f"missing {', '.join(missing)} and no wheelhouse at {args.wheelhouse}: run `make "
              "gpu-wheelhouse` where pip reaches an index, and bring the folder along")  # fmt: skip
        return 1
    done = pip_install(args.wheelhouse, args.target, args.requirements)
    if done.returncode != 0:
        print(f"pip install from {args.wheelhouse} failed:\n{done.stdout}{done.stderr}")
        return 1
    imported = import_from(args.target, args.modules)
    if imported.returncode != 0:
        print(f"installed into {args.target}, but an import fails:\n{imported.stderr}")
        return 1
    installed = sorted(p.name for p in args.target.glob("*.dist-info"))
    print(f"installed {len(installed)} distributions into {args.target}: {', '.join(installed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
