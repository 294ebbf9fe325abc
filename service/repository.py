"""The models a service serves: ``--model PATH`` (repeatable) and ``--model-repository DIR``.

Every subdirectory of the repository that holds a ``model.onnx`` is a model, named after the
directory or after its ``model.json``'s ``name``. Names appear in URLs and metric labels, so they
are checked here, once, at start-up: a duplicate name, a bad name or an unreadable ``model.json``
stops the service with one line saying which entry is wrong. (A ``model.onnx`` that does not
load is found later, in the engine process, and fails that model alone.)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from service.modelspec import locate, read_meta

# Safe in a URL path segment and a Prometheus label value.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
HASH_CHUNK_BYTES = 1 << 20


class RepositoryError(ValueError):
    """A model entry the service cannot serve (missing, misnamed, duplicated, bad model.json)."""


@dataclass(frozen=True)
class ModelEntry:
    """One model to serve: its name and the path given for it (a file or a model directory)."""

    name: str
    path: Path

    @property
    def onnx_path(self) -> Path:
        return locate(self.path)[0]


def entry_for(path: Path) -> ModelEntry:
    """The entry for a model file or directory (its name from ``model.json`` if it says one)."""
    onnx_path, meta_path, default_name = locate(path)
    if not onnx_path.is_file():
        raise RepositoryError(f"model {str(path)!r}: no model file at {str(onnx_path)!r}")
    name = default_name
    if meta_path is not None:
        try:
            meta = read_meta(meta_path)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'model.json'}: {e['msg']}" for e in exc.errors()
            )
            raise RepositoryError(f"model {str(path)!r}: invalid model.json ({problems})") from None
        except (OSError, ValueError) as exc:
            first = str(exc).splitlines()[0]
            raise RepositoryError(f"model {str(path)!r}: unreadable model.json ({first})") from None
        name = meta.name or default_name
    if not NAME_PATTERN.fullmatch(name):
        raise RepositoryError(
            f"model {str(path)!r}: name {name!r} must match {NAME_PATTERN.pattern}"
        )
    return ModelEntry(name, path)


def scan(repository: Path) -> list[ModelEntry]:
    """Every subdirectory of ``repository`` holding a ``model.onnx`` (others are not models)."""
    if not repository.is_dir():
        raise RepositoryError(f"model repository {str(repository)!r} is not a directory")
    return [
        entry_for(child)
        for child in sorted(repository.iterdir())
        if child.is_dir() and (child / "model.onnx").is_file()
    ]


def discover(models: Sequence[Path], repository: Path | None) -> list[ModelEntry]:
    """Every model to serve, sorted by name; duplicates and bad entries are errors."""
    entries = [entry_for(path) for path in models]
    if repository is not None:
        entries += scan(repository)
    if not entries:
        where = f"repository {str(repository)!r}" if repository is not None else "the settings"
        raise RepositoryError(f"no model to serve: {where} names none")
    by_name: dict[str, ModelEntry] = {}
    for entry in entries:
        if entry.name in by_name:
            raise RepositoryError(
                f"two models named {entry.name!r}: {str(by_name[entry.name].path)!r} and "
                f"{str(entry.path)!r}"
            )
        by_name[entry.name] = entry
    return sorted(entries, key=lambda e: e.name)


def pick_default(entries: Sequence[ModelEntry], name: str | None) -> str:
    """The model ``/predict`` and ``/model`` answer for: ``name``, or the first by name."""
    names = [entry.name for entry in entries]
    if name is None:
        return names[0]
    if name not in names:
        raise RepositoryError(f"default model {name!r} is not among the models {names}")
    return name


def content_hash(path: Path) -> str:
    """SHA-256 of a file's bytes, in hex (names the model's autotune cache file)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def cache_file(cache_dir: Path, entry: ModelEntry) -> Path:
    """The model's own autotune cache file in the service's cache directory: a changed
    ``model.onnx`` gets a new file, an unchanged one finds its tuning again after a restart."""
    return cache_dir / f"{entry.name}-{content_hash(entry.onnx_path)[:16]}.json"
