"""The memory check's arithmetic against this machine's real free memory and a limit."""

from __future__ import annotations

import psutil
import pytest

from service.errors import ModelTooLarge
from service.memory import MIB, MemoryEstimate, check_fits, device_free_bytes


def need(total_bytes: int) -> MemoryEstimate:
    return MemoryEstimate(total_bytes // 4, total_bytes // 4, total_bytes // 4, total_bytes // 4)


def test_more_than_the_host_has_is_refused_naming_what_is_free():
    free, where = device_free_bytes("cpu")
    assert 0 < free <= psutil.virtual_memory().total
    huge = need(2 * psutil.virtual_memory().total)
    with pytest.raises(ModelTooLarge, match="usable") as caught:
        check_fits("big", huge, 0, "cpu", None)
    assert where in caught.value.message and caught.value.status == 507
    check_fits("tiny", need(4 * MIB), 0, "cpu", None)  # a few MiB fit


def test_the_limit_counts_the_other_models():
    check_fits("b", need(4 * MIB), 4 * MIB, "cpu", 8)  # exactly what is left
    with pytest.raises(ModelTooLarge, match=r"leaves 3\.00 MiB after the other models' 5\.00"):
        check_fits("b", need(4 * MIB), 5 * MIB, "cpu", 8)
