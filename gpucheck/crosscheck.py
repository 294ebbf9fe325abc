"""``python -m gpucheck.crosscheck --device cuda``: the engine on a device against the NumPy engine.

1. The benchmark nets (engine/bench/nets.py), every batch bucket, with CUDA graphs on and off,
   the conv algorithms tuned as the service would tune them: ``Model.cross_check`` against one
   NumPy reference per net (engine/crosscheck.py).
2. Every case of the claimed ONNX conformance set (tests/engine/conformance.py): onnx's own
   runner drives a backend that runs each model on the device and on the NumPy engine, fails the
   case when they differ (``cross-check:``), and hands the device's outputs on to the runner's
   comparison with onnx's expected outputs.

Prints Markdown tables; exit code 1 when anything differs or failed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import unittest
import warnings
from pathlib import Path

from onnx.backend.base import Backend

NET_BUCKETS = {"cifar": (1, 2, 4, 8, 16, 32, 64, 128), "resnet18": (1, 2, 4, 8, 16, 32, 64)}
CHECK_PREFIX = "cross-check:"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gpucheck.crosscheck", description=__doc__)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--nets", default="cifar,resnet18", help="bench nets ('' for none)")
    parser.add_argument("--conformance", default=".", help="regex on the case names ('' for none)")
    parser.add_argument("--workdir", help="for nets and autotune caches (default: a temp dir)")
    parser.add_argument("--buckets", help="batch buckets for every net (default: per net, "
                        f"{NET_BUCKETS})")  # fmt: skip
    args = parser.parse_args(argv)
    args.nets = [n for n in args.nets.split(",") if n]
    args.buckets = tuple(int(b) for b in args.buckets.split(",")) if args.buckets else None
    return args


# ---- the bench nets ----------------------------------------------------------------------------


def graph_modes(device: str) -> tuple[bool, ...]:
    """CUDA graphs on and off on a GPU; the CPU has no graphs."""
    return (True, False) if device == "cuda" else (True,)


def check_model(label: str, model, reference) -> dict:
    """One model against the reference on every bucket; a row for ``nets_table``."""
    from engine import CrossCheckError

    started = time.perf_counter()
    try:
        result = model.cross_check(reference)
    except CrossCheckError as error:
        result = error.result
    graphs = getattr(model.backend, "graphs", None)
    return {"label": label, "result": result, "seconds": time.perf_counter() - started,
            "graphs": graphs.info() if graphs is not None else None}  # fmt: skip


def check_nets(nets, device: str, workdir: Path, buckets=None) -> list[dict]:
    """Each net's models (graphs on and off) against one NumPy reference per net, on
    ``buckets`` (default: ``NET_BUCKETS``)."""
    from engine import load_model
    from engine.bench.nets import NETS

    rows = []
    for net in nets:
        path = workdir / f"{net}.onnx"
        path.write_bytes(NETS[net][0]().SerializeToString())
        net_buckets, cache = buckets or NET_BUCKETS[net], workdir / f"{net}.{device}.autotune.json"
        reference = load_model(path, "cpu", net_buckets, autotune_mode="off", cpu_threading="blas")
        for graphs in graph_modes(device):
            model = load_model(path, device, net_buckets, autotune_cache=cache, cuda_graphs=graphs)
            label = f"{net}, graphs {'on' if graphs else 'off'}" if device == "cuda" else net
            rows.append(check_model(label, model, reference))
            print(f"checked {label}: {verdict(rows[-1]['result'])} in "
                  f"{rows[-1]['seconds']:.1f} s", flush=True)  # fmt: skip
    return rows


def verdict(result: dict) -> str:
    return "pass" if result["passed"] else "FAIL"


def nets_table(rows: list[dict]) -> list[str]:
    lines = ["| model | buckets | largest relative error | largest abs error | tolerance | result "
             "| first wrong layer | graphs captured |",
             "|---|---|---:|---:|---:|---|---|---|"]  # fmt: skip
    for row in rows:
        r, buckets = row["result"], row["result"]["buckets"]
        worst = max(buckets, key=lambda b: b["relative_error"])
        layer = next((b["layer"] for b in buckets if b["layer"]), None)
        blamed = f"{layer['layer']} ({layer['algorithm'] or layer['op']}, " \
                 f"{layer['relative_error']:.1e})" if layer else ""  # fmt: skip
        graphs = row["graphs"]
        captured = f"{graphs['graphs']} of {graphs['graphs'] + graphs['eager']}" if graphs else ""
        lines.append(f"| {row['label']} | {','.join(str(b['bucket']) for b in buckets)} "
                     f"| {worst['relative_error']:.1e} | {worst['max_abs_error']:.2g} "
                     f"| {r['tolerance']:.0e} ({r['math']}) | {verdict(r)} | {blamed} "
                     f"| {captured} |")  # fmt: skip
    failures = [f"- {row['label']}: {failure_text(row['result'])}" for row in rows
                if not row["result"]["passed"]]  # fmt: skip
    return lines + ([""] + failures if failures else [])


def failure_text(result: dict) -> str:
    from engine.crosscheck import describe_failure

    return describe_failure(result)


# ---- the conformance set -----------------------------------------------------------------------


class PairedRep:
    """A conformance case prepared twice: on the device and on the NumPy engine."""

    def __init__(self, proto, device: str):
        from engine.onnx_backend import GemmserveRep

        self.device = device
        self.checked = GemmserveRep(proto, device)
        self.reference = GemmserveRep(proto, "cpu")

    def run(self, inputs, **kwargs):
        from engine.crosscheck import TOLERANCE, difference

        got = self.checked.run(inputs)
        want = self.reference.run(inputs)
        for index, (y, ref) in enumerate(zip(got, want, strict=True)):
            found = difference(y, ref)
            if not found.within(TOLERANCE["fp32"]):
                raise AssertionError(
                    f"{CHECK_PREFIX} output {index} on {self.device} differs from the NumPy "
                    f"engine by {found.relative:.2e} relative (largest absolute error "
                    f"{found.max_abs:.3g})"
                )
        return got


class PairedBackend(Backend):
    """An onnx backend (``prepare``, ``run_model``, ``supports_device``) over ``PairedRep``."""

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs) -> PairedRep:
        super().prepare(model, device, **kwargs)  # checks the model
        return PairedRep(model, device.split(":")[0].lower())

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        from engine.onnx_backend import GemmserveBackend

        return GemmserveBackend.supports_device(device)


def conformance_suite(device: str, pattern: str) -> unittest.TestSuite:
    """The claimed cases for ``device`` whose names match ``pattern``, over ``PairedBackend``."""
    from tests.engine.conformance import claimed_backend_test

    backend_test = claimed_backend_test(PairedBackend, __name__)
    suite = unittest.TestSuite()
    for case in backend_test.test_cases.values():
        for name in unittest.defaultTestLoader.getTestCaseNames(case):
            if name.endswith(f"_{device}") and re.search(pattern, name):
                suite.addTest(case(name))
    return suite


def run_conformance(device: str, pattern: str, workdir: Path) -> unittest.TestResult:
    os.environ["ONNX_HOME"] = str(workdir / "onnx_home")  # the light models' data go there
    # onnx's case generators overflow casts on purpose when its test package is imported
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"onnx\.backend\.test")
    suite = conformance_suite(device, pattern)
    print(f"conformance: {suite.countTestCases()} cases on {device}", flush=True)
    result, started = unittest.TestResult(), time.perf_counter()
    for index, test in enumerate(suite, 1):  # one at a time: a failure is printed at once, so a
        seen = len(result.failures) + len(result.errors)  # step stopped at its limit keeps them
        test.run(result)
        for failed, text in (result.failures + result.errors)[seen:]:
            print(problem_line(failed, text), flush=True)
        if index % 50 == 0:
            print(
                f"conformance: {index} cases in {time.perf_counter() - started:.0f} s", flush=True
            )
    return result


def problem_line(test, text: str) -> str:
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    return f"- {test.id().rsplit('.', 1)[-1]}: {last[:300]}"


def conformance_lines(result: unittest.TestResult) -> list[str]:
    """Counts, then one line per failed case: a device/NumPy mismatch, or onnx's own check."""
    problems = result.failures + result.errors
    mismatches = [text for _, text in problems if CHECK_PREFIX in text]
    skipped = len(result.skipped)
    lines = [f"conformance: {result.testsRun - skipped} run, {len(mismatches)} differ from the "
             f"NumPy engine, {len(problems) - len(mismatches)} fail otherwise (onnx's expected "
             f"outputs, errors), {skipped} skipped"]  # fmt: skip
    return lines + [problem_line(test, text) for test, text in problems]


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpucheck-crosscheck-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ok = True
    if args.nets:
        rows = check_nets(args.nets, args.device, workdir, args.buckets)
        print("\n## Bench nets against the NumPy engine\n\n" + "\n".join(nets_table(rows)))
        ok = all(row["result"]["passed"] for row in rows)
    if args.conformance:
        result = run_conformance(args.device, args.conformance, workdir)
        print("\n## ONNX conformance cases against the NumPy engine\n")
        print("\n".join(conformance_lines(result)))
        ok = ok and result.wasSuccessful()
    print(f"\ncross-check on {args.device}: {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
