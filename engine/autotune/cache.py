"""The autotune cache file: a header that says where the timings are valid, and one entry per
conv spec.

```json
{"header": {"schema": 1, "engine_version": "0.1.0", "kernel_hash": "<sha256>",
            "device": {...Backend.fingerprint()...}},
 "entries": {"<ConvSpec.key()>": {"winner": "winograd_f4x4_3x3", "ms": 1.2,
                                  "runners_up": [{"name": "im2col_gemm", "ms": 2.5}],
                                  "rejected": [{"name": "...", "reason": "..."}]}}}
```

A file whose header differs (another device, engine version or kernel source) is ignored and
never overwritten: its timings may be right for the machine it came from. A file that cannot be
parsed is ignored too. Writes go to a temporary file in the same directory and then
``os.replace``, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from engine.version import __version__

log = logging.getLogger("engine.autotune")

SCHEMA_VERSION = 1
_ENGINE_DIR = Path(__file__).resolve().parent.parent
_KERNEL_SOURCES = ("conv/*.py", "kernels/*.cu", "jit.py", "backends/cpu_*.py")


@functools.cache
def kernel_hash() -> str:
    """sha256 over the conv algorithm, compiled CPU and CUDA kernel sources: timings of other
    code are stale."""
    digest = hashlib.sha256()
    for pattern in _KERNEL_SOURCES:
        for path in sorted(_ENGINE_DIR.glob(pattern)):
            digest.update(path.relative_to(_ENGINE_DIR).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def make_header(fingerprint: dict) -> dict:
    return {
        "schema": SCHEMA_VERSION,
        "engine_version": __version__,
        "kernel_hash": kernel_hash(),
        "device": fingerprint,
    }


class CacheFile:
    """One cache file on disk. ``status`` says what ``load`` found: absent, loaded, foreign
    (header mismatch) or corrupt; only an absent or a matching file is ever written."""

    def __init__(self, path, header: dict):
        self.path = Path(path)
        self.header = json.loads(json.dumps(header))  # as it reads back from JSON
        self.status = "absent"

    @property
    def writable(self) -> bool:
        return self.status in ("absent", "loaded")

    def load(self) -> dict[str, dict]:
        """The entries of a matching file; {} (with a warning) for anything else."""
        try:
            text = self.path.read_bytes()  # decoded by json.loads: bad UTF-8 is "corrupt" too
        except FileNotFoundError:
            self.status = "absent"
            return {}
        except OSError as error:
            return self._ignore("corrupt", f"cannot read it ({error})")
        try:
            data = json.loads(text)
            header, entries = data["header"], data["entries"]
            if not isinstance(entries, dict) or not isinstance(header, dict):
                raise TypeError("header or entries is not an object")
        except (ValueError, KeyError, TypeError) as error:
            return self._ignore("corrupt", f"it is not a valid cache file ({error})")
        if header != self.header:
            keys = {*header, *self.header}
            changed = sorted(k for k in keys if header.get(k) != self.header.get(k))
            return self._ignore("foreign", f"it was made for another setup ({', '.join(changed)})")
        self.status = "loaded"
        return entries

    def _ignore(self, status: str, why: str) -> dict:
        self.status = status
        log.warning(
            "autotune cache %s ignored: %s; it is left as it is and new results stay in memory",
            self.path,
            why,
        )
        return {}

    def save(self, entries: dict[str, dict]) -> bool:
        """Merge ``entries`` over what the file holds now and replace it atomically.

        Returns False (with a warning) when the file is not ours or the directory is not
        writable; the caller keeps its results in memory.
        """
        if not self.writable:
            return False
        on_disk = CacheFile(self.path, self.header)
        merged = {**on_disk.load(), **entries}  # another process may have added entries
        if not on_disk.writable:
            self.status = on_disk.status
            return False
        ordered = {key: merged[key] for key in sorted(merged)}
        body = json.dumps({"header": self.header, "entries": ordered}, indent=1)
        try:
            atomic_write(self.path, body)
        except OSError as error:
            log.warning("autotune cache %s not written (%s); kept in memory", self.path, error)
            return False
        self.status = "loaded"
        return True


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
