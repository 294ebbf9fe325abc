"""Coverage-guided fuzzing of ``Decoder.decode`` with atheris (libFuzzer), where atheris installs.

    python -m tests.reliability.atheris_decode -runs=100000 -max_len=65536

The first input byte picks the content type, the rest is the body; the corpus starts from the
seeds of ``tests/reliability/corpus.py``. Any exception other than the service's typed 4xx errors,
or a malformed batch, is a crash that libFuzzer saves as ``crash-*``. ``make test`` runs a short
version through ``test_decode_fuzz.py`` when atheris is installed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris
import numpy  # noqa: F401 - imported before instrumenting: only the service's code is traced
import PIL.Image  # noqa: F401

with atheris.instrument_imports(include=["service"]):
    from service import decode, multipart  # noqa: F401 - instrumented for coverage feedback

from tests.reliability.corpus import CONTENT_TYPES, SEEDS, check_decode, make_decoder
from tests.service.models import write_model_dir


def write_corpus(directory: Path) -> None:
    for n, (content_type, body) in enumerate(SEEDS):
        (directory / f"seed-{n}").write_bytes(bytes([CONTENT_TYPES.index(content_type)]) + body)


def main(argv: list[str]) -> None:
    work = Path(tempfile.mkdtemp(prefix="gemmserve-fuzz-"))
    decoder = make_decoder(write_model_dir(work, "tiny"))
    corpus = work / "corpus"
    corpus.mkdir()
    write_corpus(corpus)

    def one_input(data: bytes) -> None:
        if data:
            check_decode(decoder, CONTENT_TYPES[data[0] % len(CONTENT_TYPES)], data[1:])

    atheris.Setup([argv[0], *argv[1:], str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
