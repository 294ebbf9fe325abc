"""The image installs `.` (CPU) or `.[gpu]` and nothing else: whatever the server and the tuner
import must come from those requirements, never from the dev extra."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.deploy.files import ROOT

PACKAGES = ("engine", "service")
# `python -m service` (the image's CMD) and `python -m engine.autotune` (the tools profile).
ENTRY_POINTS = ("service.__main__", "engine.autotune")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _optional_imports(tree: ast.AST) -> set[int]:
    """ids of import nodes inside ``try: ... except ImportError``: deliberate optional imports."""
    optional = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
            for h in node.handlers
        ):
            for statement in node.body:
                optional |= {id(n) for n in ast.walk(statement)}
    return optional


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of everything a module imports, at any depth of its code, except the
    optional imports (guarded by ``except ImportError``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    optional = _optional_imports(tree)
    names = set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


def _walk(entries: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """The project's modules reachable from ``entries`` by imports, and the top-level third-party
    modules they import."""
    modules = _modules()
    todo = [e for e in entries if e in modules]
    assert todo, f"none of {entries} exists"
    seen, outside = set(), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        for imported in _imports(name, modules[name]) | set(parents):
            top = imported.split(".")[0]
            if imported in modules:
                todo.append(imported)
            elif top not in PACKAGES and top not in sys.stdlib_module_names:
                outside.add(top)
    return seen, outside


def reachable_third_party(entries: tuple[str, ...]) -> set[str]:
    """Top-level third-party modules imported by the code reachable from ``entries``."""
    return _walk(entries)[1]


@functools.cache
def runtime_distributions(extras: tuple[str, ...]) -> frozenset[str]:
    """Distributions `pip install .[extras]` brings, followed through installed metadata."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        todo += [Requirement(r) for r in project["optional-dependencies"][extra]]
    found: set[str] = set()
    while todo:
        requirement = todo.pop()
        name = _normalize(requirement.name)
        if name in found:
            continue
        found.add(name)
        try:
            requires = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            sub = Requirement(text)
            wanted = requirement.extras or {""}
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in wanted):
                todo.append(sub)
    return frozenset(found)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# Who installs the modules of the gpu extra, for machines where it is not installed (CI has no GPU).
NOT_INSTALLED_OWNERS = {m: ["cupy-cuda12x"] for m in ("cupy", "cupyx", "cupy_backends")}


@functools.cache
def _owners(module: str) -> frozenset[str]:
    """The distributions that install a top-level module (normalized names)."""
    distributions = _packages_distributions()
    owners = distributions.get(module) or NOT_INSTALLED_OWNERS.get(module, [module])
    return frozenset(_normalize(d) for d in owners)


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def gpu_only_modules(modules: set[str]) -> set[str]:
    """Those of ``modules`` that only the gpu extra installs (CuPy and its siblings)."""
    gpu_only = runtime_distributions(("gpu",)) - runtime_distributions(())
    return {m for m in modules if _owners(m) & gpu_only}


@pytest.mark.parametrize("variant,extras", [("cpu", ()), ("gpu", ("gpu",))])
def test_served_code_imports_only_runtime_requirements(variant: str, extras: tuple) -> None:
    allowed = runtime_distributions(extras)
    entries = ENTRY_POINTS + tuple(e + ".__main__" for e in ENTRY_POINTS)
    imported = reachable_third_party(entries)
    if variant == "cpu":  # no CuPy in the CPU image: the engine imports it on request only
        imported -= gpu_only_modules(imported)
    missing = {m: sorted(_owners(m)) for m in imported if not _owners(m) & allowed}
    assert not missing, f"imported by the served code, not installed in the {variant} image"


def import_time_imports(node: ast.AST) -> Iterator[str]:
    """Modules imported when a module is imported: everything outside function bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(child, ast.Import):
            yield from (alias.name for alias in child.names)
        elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
            yield child.module
        yield from import_time_imports(child)


def test_gpu_packages_are_never_imported_at_import_time() -> None:
    # The CPU image has no CuPy: an import-time `import cupy` (or cupyx) anywhere would stop it
    # starting.
    for name, path in _modules().items():
        imported = {m.split(".")[0] for m in import_time_imports(ast.parse(path.read_text()))}
        assert not gpu_only_modules(imported - set(PACKAGES)), name


def test_the_benchmark_is_not_shipped() -> None:
    """`python -m engine.bench` runs from a checkout: the wheel (so the image) leaves it out, and
    nothing the service or the tuner runs imports it."""
    import setuptools

    find = dict(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"][
            "find"
        ]
    )
    # pyproject.toml's find includes namespace packages (folders without __init__.py) by default.
    finder = (
        setuptools.find_namespace_packages
        if find.pop("namespaces", True)
        else setuptools.find_packages
    )
    shipped = set(finder(str(ROOT), **find))
    assert {"engine", "engine.cuda", "engine.conv", "service"} <= shipped
    assert not {p for p in shipped if p == "engine.bench" or p.startswith("engine.bench.")}
    assert (ROOT / "engine" / "bench" / "__main__.py").exists()
    served, _ = _walk(ENTRY_POINTS + tuple(e + ".__main__" for e in ENTRY_POINTS))
    assert "engine.backends" in served and "service.app" in served
    assert not {m for m in served if m.startswith("engine.bench")}
