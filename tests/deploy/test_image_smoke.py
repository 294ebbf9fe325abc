"""The image's install and start-up, rehearsed without Docker.

The build stage's files are copied as the Dockerfile copies them, built into a wheel and unpacked
into a fake image root; the runtime stage's files and environment are laid out under the same
root; the Compose tuner (tools profile, CPU override) fills the cache volume; then the image's
command runs there with the Compose environment, on a loopback port. What it checks: the package
works when installed (not from the source tree), the tuner's cache is what the server starts
from, the bundled model serves, the image's healthcheck passes, /metrics carries the names the
dashboard reads, nothing is written outside the cache volume (the root filesystem is read-only),
and SIGTERM ends it inside the grace period.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from loadtests.service_proc import CLEAN_EXIT_CODES, free_port, http_get
from tests.deploy.files import GPU_ONLY_METRICS, METRICS, ROOT, copied_files
from tests.deploy.project import (
    CPU,
    STAGE,
    VOLUME_DIR,
    compose_config,
    healthcheck_argv,
    image_argv,
    image_env,
    run_healthcheck,
    seconds,
)

pytestmark = pytest.mark.slow  # builds a wheel and starts a server: about 20 s on 2 cores

START_LIMIT_S = 180  # a bound against hanging, not a speed requirement


def _lay_out(stage: str, root: Path) -> None:
    """Copy the repository files a stage copies to where the stage puts them, under ``root``."""
    for dest, source in copied_files(STAGE[stage]).items():
        target, origin = root / dest.lstrip("/"), ROOT / source
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, target)


def _install(root: Path) -> tuple[Path, set[Path]]:
    """The build stage's ``pip install .``, as a wheel unpacked into ``root/opt/site``; also the
    package files the build context held (relative paths)."""
    _lay_out("build", root)
    source = root / "src"
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    excluded = find["find"].get("exclude", [])  # left out on purpose (the benchmark)
    packaged = {
        p.relative_to(source)
        for package in ("engine", "service")
        for p in (source / package).rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and not any(
            fnmatch.fnmatchcase(".".join(p.relative_to(source).parent.parts), pattern)
            for pattern in excluded
        )
    }
    wheels = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(wheels), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("gemmserve-*.whl")
    site = root / "opt" / "site"
    shutil.unpack_archive(wheel, site, format="zip")
    shutil.rmtree(source)
    shutil.rmtree(wheels)
    return site, packaged


def _move(value: str, root: Path) -> str:
    """An image path (the model under /app, the cache volume) moved under ``root``."""
    return str(root / value.lstrip("/")) if value.startswith(("/app", VOLUME_DIR)) else value


def _environment(root: Path, site: Path, service: dict) -> dict[str, str]:
    """The image's environment and a Compose service's (CPU override), paths moved under
    ``root``; the server binds loopback on a free port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMMSERVE_")}
    env.pop("VIRTUAL_ENV", None)
    settings = {**image_env("cpu"), "PYTHONDONTWRITEBYTECODE": "1"}
    settings |= {k: v for k, v in service.get("environment", {}).items() if v is not None}
    env |= {key: _move(value, root) for key, value in settings.items()}
    env.update(PYTHONPATH=str(site), GEMMSERVE_HOST="127.0.0.1", GEMMSERVE_PORT=str(free_port()))
    return env


def _run_tuner(root: Path, site: Path, service: dict) -> None:
    """``docker compose run --rm autotune``: its command, in the image, on the cache volume."""
    argv = [_move(word, root) for word in service["command"]]
    assert argv[0] == "python"
    done = subprocess.run(
        [sys.executable, *argv[1:]],
        cwd=root / "app",
        env=_environment(root, site, service),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _post_png(url: str) -> tuple[int, dict]:
    from PIL import Image

    pixels = np.random.default_rng().integers(0, 256, (28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    request = urllib.request.Request(
        url, data=buffer.getvalue(), headers={"Content-Type": "image/png"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status, json.loads(answer.read())


class Image:
    """The rehearsed container: its root, port and running process."""

    def __init__(self, root: Path, env: dict[str, str], argv: list[str], log: Path, packaged):
        self.root, self.env, self.log, self.packaged = root, env, log, packaged
        self.port = int(env["GEMMSERVE_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.before = _files(root)
        with log.open("wb") as out:  # a file, not a pipe: a full pipe would stall the server
            self.process = subprocess.Popen(
                argv, cwd=root / "app", env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if http_get(self.url + "/readyz", timeout_s=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"not ready (exit code {self.process.poll()}): {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Iterator[Image]:
    if not (ROOT / "models" / "digits" / "model.onnx").exists():
        pytest.fail("the bundled model models/digits/model.onnx is missing")
    root = tmp_path_factory.mktemp("image")
    site, packaged = _install(root)
    _lay_out("runtime", root)
    (root / VOLUME_DIR.lstrip("/")).mkdir(parents=True)
    services = compose_config(CPU, ("tools",))["services"]
    _run_tuner(root, site, services["autotune"])
    env = _environment(root, site, services["gemmserve"])
    log = tmp_path_factory.mktemp("image-log") / "server.log"
    started = Image(root, env, [sys.executable, *image_argv()[1:]], log, packaged)
    try:
        started.wait_ready()
        yield started
    finally:
        if started.process.poll() is None:
            started.process.kill()
            started.process.wait()


def test_installed_package_is_what_runs(image: Image) -> None:
    probe = "import engine, service; print(engine.__file__); print(service.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=image.root / "app",
        env=image.env,
        capture_output=True,
        text=True,
        check=True,
    )
    site = image.root / "opt" / "site"
    assert all(Path(line).is_relative_to(site) for line in done.stdout.split()), done.stdout


def test_installed_package_carries_every_file_of_the_build_context(image: Image) -> None:
    # Modules and data (the CUDA kernel sources the GPU backend compiles at run time): a folder
    # without __init__.py or a file pattern missing from package-data would be left out.
    site = image.root / "opt" / "site"
    missing = sorted(str(p) for p in image.packaged if not (site / p).is_file())
    assert not missing, f"in engine/ or service/ but not installed: {missing}"


def test_image_healthcheck_passes_against_the_server(image: Image) -> None:
    assert run_healthcheck(healthcheck_argv(), image.port) == 0


def test_bundled_model_answers_a_prediction_counted_under_its_route(image: Image) -> None:
    status, body = _post_png(image.url + "/predict")
    assert status == 200
    assert body["model"] == "digits" and len(body["results"]) == 1
    assert body["results"][0]["predictions"], body
    # The alerts, the dashboard's default and the autoscaler's request rate select this label.
    metrics = http_get(image.url + "/metrics")[1].decode()
    counted = (
        'gemmserve_request_duration_seconds_count{model="digits",route="/predict",status="200"}'
    )
    assert counted in metrics
    for path in ("deploy/prometheus-rules.yml", "deploy/k8s/prometheus-adapter-values.yaml"):
        assert 'route="/predict"' in (ROOT / path).read_text(), path


def test_metrics_carry_every_name_the_dashboard_reads(image: Image) -> None:
    status, text = http_get(image.url + "/metrics")
    assert status == 200
    types = {}
    for line in text.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
    for name, kind in METRICS.items():
        if name not in GPU_ONLY_METRICS:  # this server runs on the CPU
            assert types.get(name) == kind, f"{name}: {types.get(name)} (expected {kind})"


def test_server_starts_from_the_cache_the_tuner_filled(image: Image) -> None:
    # The tools profile's tuner wrote the volume; the server found every conv layer there.
    cache = Path(image.env["GEMMSERVE_AUTOTUNE_CACHE"])
    assert cache.is_file() and cache.is_relative_to(image.root / VOLUME_DIR.lstrip("/"))
    status, body = http_get(image.url + "/model")
    assert status == 200
    convs = [layer for layer in json.loads(body)["layers"] if layer["op"] == "Conv"]
    assert convs and all(layer["source"] == "cache" for layer in convs), convs


def test_sigterm_ends_the_server_within_the_grace_period_writing_only_the_volume(
    image: Image,
) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grace_s = seconds(compose["services"]["gemmserve"]["stop_grace_period"])
    image.process.send_signal(signal.SIGTERM)
    try:
        code = image.process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {grace_s} s after SIGTERM: Docker would SIGKILL it")
    assert code in CLEAN_EXIT_CODES, image.output()
    volume = image.root / VOLUME_DIR.lstrip("/")
    written = {p for p in _files(image.root) - image.before if not p.is_relative_to(volume)}
    assert not written, f"written outside the cache volume: {sorted(map(str, written))}"
