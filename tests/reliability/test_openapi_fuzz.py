"""schemathesis against the service's own ``/openapi.json`` on a running server: no 5xx for any
generated request, and every answer matches the schema (status, content type, body).

Driven through ``APIOperation.as_strategy`` rather than ``schema.parametrize``: the lazy pytest
loader (needed to read the schema from a server a fixture starts) does not run on pytest 9.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.reliability.harness import http

# Bounded so that each mode stays well under a minute on two cores.
MAX_EXAMPLES = 20
# The contract's own 5xx: overloaded or not ready (503) and a passed deadline (504, e.g. a client
# that asks for X-Timeout-Ms: 1). Anything else from the 5xx range is a server error.
CONTRACT_5XX = {503: "not_ready", 504: "deadline_exceeded"}


def no_unexpected_server_error(ctx, response, case):
    """``not_a_server_error``, except the 503/504 answers DESIGN.md promises, in their JSON form."""
    code = CONTRACT_5XX.get(response.status_code)
    if (
        code is not None
        and code in response.text
        and str(response.status_code) in (case.operation.definition.raw.get("responses", {}))
    ):
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [
    no_unexpected_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def failures_of(operation, mode, examples: dict[str, str], **fixed) -> list[str]:
    """Run ``MAX_EXAMPLES`` generated cases against one operation; the failures, as one line each
    (and one full report per operation in ``examples``). ``fixed`` pins path parameters."""
    found: list[str] = []

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed or None))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        response = case.call(timeout=30)
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:  # how schemathesis reports failed checks
            for failure in group.exceptions:
                found.append(f"{operation.label} -> {response.status_code}: {failure.title}")
            examples.setdefault(operation.label, str(group)[:1500])

    try:
        run()
    except Unsatisfiable:  # nothing to negate: an operation without parameters or body
        assert mode is GenerationMode.NEGATIVE
    return found


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_every_operation_conforms_and_never_5xx(server, mode):
    """Generated paths, queries, headers and bodies for every operation of the schema."""
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    name = http.get(server.url + "/model").json()["name"]
    examples: dict[str, str] = {}
    failures = [f for op in operations for f in failures_of(op, mode, examples)]
    # Again with the served model's name, so that the body of the inference routes is reached.
    for op in operations:
        if op.path.endswith("/infer"):
            failures += failures_of(op, mode, examples, name=name, version="1")
    summary = "\n".join(sorted(set(failures)))
    assert not failures, summary + "\n\n" + "\n\n".join(examples.values())
