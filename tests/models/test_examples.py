"""Every example command (examples/README.md, the top-level README, classify.sh, classify.py) run
as written against a real server for models/digits: each digit must come back as its own label."""

from __future__ import annotations

import glob
import importlib.util
import json
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.models.conftest import REPO, digits_data

EXAMPLES = REPO / "examples"
DOCUMENTED_URL = "http://127.0.0.1:8000"
# The top-level README copies the examples section verbatim; its blocks that use examples/ run too.
DOCS = [EXAMPLES / "README.md", REPO / "README.md"]


def shell_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```(?:sh|bash|shell)\n(.*?)^```", markdown, flags=re.S | re.M)


def example_blocks() -> list[str]:
    blocks = []
    for doc in DOCS:
        found = shell_blocks(doc.read_text()) if doc.exists() else []
        blocks += [b for b in found if "examples/" in b and b not in blocks]
    return blocks


def script_commands(script: str) -> list[str]:
    """The command lines of a shell script (comments, blank lines and `set` left out)."""
    lines = script.replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip() and not re.match(r"\s*(#|set )", line)]


def run_as_user(command: str, url: str) -> str:
    """Run a documented command from the repository root, pointed at the test server."""
    command = command.replace(DOCUMENTED_URL, url)
    command = re.sub(r"^python ", shlex.quote(sys.executable) + " ", command, flags=re.M)
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{command!r} failed: {done.stderr}"
    return done.stdout


def expected_labels(command: str) -> list[str]:
    """The digits a command sends, in order: each example file is named after its digit."""
    labels = []
    for word in shlex.split(command):
        pattern = word.split("@")[-1]
        for path in sorted(glob.glob(pattern, root_dir=REPO)):
            labels += re.findall(r"digit-(\d)\.", path)
    return labels


def answered_labels(output: str) -> list[str]:
    """Top labels from /predict JSON, KServe v2 JSON (argmax of the logits) or classify.py lines."""
    labels = []
    for line in filter(None, output.splitlines()):
        if not line.startswith("{"):
            labels.append(line.split()[1])
            continue
        answer = json.loads(line)
        if "results" in answer:
            labels += [result["predictions"][0]["label"] for result in answer["results"]]
        else:
            (tensor,) = answer["outputs"]
            logits = np.reshape(tensor["data"], tensor["shape"])
            labels += [str(index) for index in logits.argmax(axis=1)]
    return labels


@pytest.mark.parametrize("command", example_blocks())
def test_documented_command_classifies_each_digit(digits_server, command):
    expected = expected_labels(command)
    assert expected, f"no example digit in {command!r}"
    assert answered_labels(run_as_user(command, digits_server.url)) == expected


def test_classify_sh_runs_and_matches_the_readme(digits_server):
    script = (EXAMPLES / "classify.sh").read_text()
    commands = script_commands(script)
    documented = {" ".join(block.split()) for block in example_blocks()}
    assert commands and {" ".join(c.split()) for c in commands} <= documented
    expected = [label for command in commands for label in expected_labels(command)]
    assert answered_labels(run_as_user(script, digits_server.url)) == expected


def test_classify_py_batch_mode(digits_server):
    command = f"python examples/classify.py --url {DOCUMENTED_URL} --batch examples/digit-*.png"
    assert answered_labels(run_as_user(command, digits_server.url)) == [str(d) for d in range(10)]


def _load_make_examples():
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_examples_are_what_make_examples_writes(tmp_path, model_json):
    _load_make_examples().write_examples(tmp_path)
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert fresh == sorted(p.name for p in EXAMPLES.glob("digit-*"))
    for name in fresh:
        ours, committed = tmp_path / name, EXAMPLES / name
        if name.endswith(".png"):
            assert np.array_equal(np.asarray(Image.open(ours)), np.asarray(Image.open(committed)))
        elif name.endswith(".npy"):
            assert np.array_equal(np.load(ours), np.load(committed))
        else:
            assert json.loads(ours.read_text()) == json.loads(committed.read_text())
    # The tensor files hold model.json's preprocessing of the PNG of the same digit.
    png = (EXAMPLES / "digit-5.png").read_bytes()
    tensor = digits_data.to_tensor(png, model_json["preprocess"])
    np.testing.assert_array_equal(np.load(EXAMPLES / "digit-5.npy"), tensor)
