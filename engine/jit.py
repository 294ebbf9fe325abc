"""numba, configured once for the engine's compiled CPU kernels, and their on-disk cache.

Nothing here runs at ``import engine``: the first compiled algorithm that is asked whether it
applies calls ``compiler()``, which sets numba's options and imports it. Settings, and why:

- the SLP vectoriser on (``NUMBA_SLP_VECTORIZE=1``; numba >= 0.59 turns it off) for the
  kernels' plain loops (padding, pooling, border pixels). The hot inner parts (register tiles,
  Winograd transforms) are explicit vector code (``engine.conv.simd``) and need no vectoriser:
  written as scalar code for it they ran 2-4x slower and compiled for minutes.
- ``fastmath`` as the flag set ``FASTMATH``, not ``True``: with reassociation LLVM vectorised
  channel reductions across accumulators and spilled them.
- no numba parallel regions: the kernels release the GIL (``nogil``) and run on the engine's
  own worker threads (``engine.threads``), the pool the other CPU algorithms use, so compiled
  kernels and BLAS never compete with a second pool. The threading layer is pinned to numba's
  own ``workqueue`` (no OpenMP/TBB spinners) in case anything else in the process uses one.
- numba's disk cache does not key on the vectoriser (a kernel cached with it off loads with it
  on and stays slow), so the cache directory is named by a hash of everything that changes the
  machine code: numba and llvmlite versions, the host CPU's name and features, the vectoriser,
  optimisation level and fastmath flags.

The cache root is ``$GEMMSERVE_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/gemmserve/kernels`` (or
``~/.cache/...``). Kernels are generated per shape class as Python source (``load_source``),
written under the cache directory once and imported from there, so numba can cache them too.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("engine.jit")

#: LLVM fast-math flags of every kernel (no ``reassoc``: see the module docstring)
FASTMATH = frozenset({"contract", "nnan", "ninf", "nsz", "arcp"})
#: numba environment settings applied before numba is imported
NUMBA_ENV = {
    "NUMBA_SLP_VECTORIZE": "1",
    "NUMBA_LOOP_VECTORIZE": "1",
    "NUMBA_OPT": "3",
    "NUMBA_THREADING_LAYER": "workqueue",
}
CACHE_ENV = "GEMMSERVE_KERNEL_CACHE"
#: the first lines of every generated kernel module: numba and the kernels' compile options
MODULE_HEADER = f"""\
import numba
import numpy as np

U = np.uint64
FASTMATH = set({sorted(FASTMATH)!r})
JIT = dict(nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy", boundscheck=False)
"""


class CompilerUnavailableError(RuntimeError):
    """numba is missing or cannot be configured: the compiled algorithms are not offered."""


@dataclass(frozen=True)
class Compiler:
    """The configured numba module, the settings its kernels are built with, and their cache."""

    numba: object
    settings: dict
    cache_dir: Path

    def fingerprint(self) -> dict:
        """What the autotune cache's device fingerprint records about the compiled kernels."""
        return dict(self.settings)


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gemmserve" / "kernels"


def _machine_code_settings() -> dict:
    """Everything that changes the code numba emits here (llvmlite only, numba not imported)."""
    from importlib.metadata import version

    import llvmlite
    import llvmlite.binding as llvm

    return {
        "numba": version("numba"),
        "llvmlite": llvmlite.__version__,
        "cpu_name": llvm.get_host_cpu_name(),
        "cpu_features": llvm.get_host_cpu_features().flatten(),
        **{key.removeprefix("NUMBA_").lower(): value for key, value in NUMBA_ENV.items()},
        "fastmath": ",".join(sorted(FASTMATH)),
    }


def cache_key(settings: dict) -> str:
    """The cache directory's name: a hash of every setting that changes the machine code."""
    return hashlib.sha256(repr(sorted(settings.items())).encode()).hexdigest()[:16]


def _writable_dir(path: Path) -> Path | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError:
        return None
    return path


@functools.cache
def compiler() -> Compiler:
    """numba set up for the engine (once per process); CompilerUnavailableError if it cannot be."""
    try:
        settings = _machine_code_settings()
    except Exception as error:  # not installed, or a broken install: either way, no kernels
        raise CompilerUnavailableError(f"numba/llvmlite unavailable: {error!r}") from error
    wanted = cache_root() / cache_key(settings)
    cache_dir = _writable_dir(wanted)
    if cache_dir is None:  # e.g. a read-only image without a prebuilt cache: compile per process
        cache_dir = Path(tempfile.mkdtemp(prefix="gemmserve-kernels-"))
        log.warning("kernel cache %s not writable; compiling into %s", wanted, cache_dir)
    os.environ.update(NUMBA_ENV)
    os.environ["NUMBA_CACHE_DIR"] = str(cache_dir / "numba")
    imported_before = "numba" in sys.modules
    try:
        import numba
        from numba.core import config

        if imported_before:  # numba read its environment already: read it again
            config.reload_config()
    except Exception as error:
        raise CompilerUnavailableError(f"numba unavailable: {error!r}") from error
    if config.SLP_VECTORIZE != 1:
        raise CompilerUnavailableError("numba's SLP vectoriser could not be switched on")
    return Compiler(numba, settings, cache_dir)


def available() -> bool:
    """True when compiled kernels can be built in this process (imports numba the first time)."""
    try:
        compiler()
    except CompilerUnavailableError as error:
        _warn_once(str(error))
        return False
    return True


@functools.cache
def _warn_once(message: str) -> None:
    log.warning("compiled CPU kernels not offered: %s", message)


_modules: dict[str, object] = {}
_modules_lock = threading.Lock()


def load_source(name: str, source: str):
    """The module generated as ``source``, compiled (or loaded from the disk cache) once.

    The file is named by a hash of its text and never rewritten: numba's cache keys on the
    file's modification time, so a rewrite would throw its cached machine code away.
    """
    key = f"{name}_{hashlib.sha256(source.encode()).hexdigest()[:16]}"
    with _modules_lock:
        if key in _modules:
            return _modules[key]
        path = compiler().cache_dir / "src" / f"{key}.py"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(source)
            os.replace(tmp, path)
        log.info("kernel %s: compiling, or loading from %s", key, compiler().cache_dir)
        started = time.perf_counter()
        spec = importlib.util.spec_from_file_location(f"_gemmserve_kernel_{key}", path)
        module = importlib.util.module_from_spec(spec)
        # importable by name while it runs: numba's cache re-imports the module of a kernel
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)  # compiles its eagerly typed kernels, or loads them
        log.info("kernel %s ready in %.2f s", key, time.perf_counter() - started)
        _modules[key] = module
        return module
