"""What threads running compiled code use to meet without the GIL (engine/lanes.py): atomic
int64 loads, stores and compare-and-swap on array elements, a barrier, and the post of a job to
the spinning lane threads.

The spin loops re-read their word without the CPU's spin-wait hint (x86 ``pause``): under a
hypervisor with pause-loop exiting (KVM's default on Intel) a vCPU that pauses in a loop for a
few microseconds is descheduled, and the lane it runs answers tens of microseconds to
milliseconds late. Measured here (2 vCPUs): a barrier round trip 30-40 us with ``pause``,
about 1 us without.

Imports numba, so only engine/lanes.py and the generated lane-chain modules import it, after
``engine.jit`` has configured numba.
"""

from __future__ import annotations

import numba
from numba import types
from numba.extending import intrinsic

#: int64 elements per cache line: each lane's word on a line of its own
STRIDE = 8
#: a lane thread's state word: in Python, waiting for a wake-up (SLEEP); woken by a post, not
#: yet back in compiled code (WAKING); spinning in compiled code for a job (SPIN); being given
#: a job (CLAIMED); given one (GO). Its next word is its rank in that job.
SLEEP, WAKING, SPIN, CLAIMED, GO = 0, 1, 2, 3, 4
#: the control array's words naming the posted job, how many lanes run it, how many turns an
#: idle lane spins before it sleeps, and whether the engine's thread is running a job (an idle
#: lane does not count its turns then: woken by a post it could not join, it stays for the next
#: one however long this job runs alone) (lane 0 is the caller: no state word)
JOB, PARTS, SPINS, BUSY = 0, 1, 2, 3
#: what a lane chain's body returns (engine/chain.py): the job done or the lane going to sleep;
#: another chain's job posted to a serving lane; a post that found sleeping lanes (nothing run)
DONE, SWITCH, WOKE = 0, 1, 2
_INT64_ARRAY = types.Array(types.int64, 1, "C")


def _pointer(context, builder, array_type, array, index, index_type):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [context.cast(builder, index, index_type, types.intp)])


def _check(array) -> None:
    if array != _INT64_ARRAY:
        raise numba.core.errors.TypingError("expected a contiguous 1-D int64 array")


@intrinsic
def load(typingctx, array, index):
    """``array[index]``, read atomically (sequentially consistent)."""
    _check(array)

    def codegen(context, builder, signature, args):
        ptr = _pointer(context, builder, array, args[0], args[1], index)
        return builder.load_atomic(ptr, "seq_cst", 8)

    return types.int64(array, index), codegen


@intrinsic
def store(typingctx, array, index, value):
    """``array[index] = value``, written atomically (sequentially consistent)."""
    _check(array)

    def codegen(context, builder, signature, args):
        ptr = _pointer(context, builder, array, args[0], args[1], index)
        word = context.cast(builder, args[2], value, types.int64)
        builder.store_atomic(word, ptr, "seq_cst", 8)
        return context.get_dummy_value()

    return types.void(array, index, value), codegen


@intrinsic
def swap(typingctx, array, index, expected, new):
    """Compare-and-swap: ``array[index] = new`` if it holds ``expected``; True if it did."""
    _check(array)

    def codegen(context, builder, signature, args):
        ptr = _pointer(context, builder, array, args[0], args[1], index)
        old = context.cast(builder, args[2], expected, types.int64)
        word = context.cast(builder, args[3], new, types.int64)
        pair = builder.cmpxchg(ptr, old, word, "seq_cst", "seq_cst")
        return builder.extract_value(pair, 1)

    return types.boolean(array, index, expected, new), codegen


def _pointer_to(dtype, name: str):
    """An intrinsic ``name(address)``: the ``dtype`` pointer at an integer address (for
    ``numba.carray``)."""

    def typer(typingctx, address):
        pointer = types.CPointer(dtype)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(pointer))

        return pointer(address), codegen

    typer.__name__ = typer.__qualname__ = name
    return intrinsic(typer)


f32_at = _pointer_to(types.float32, "f32_at")
i64_at = _pointer_to(types.int64, "i64_at")


@numba.njit(inline="always", nogil=True)
def barrier(sync, rank, parts):
    """Wait until each of the job's ``parts`` lanes has reached as many barriers as this one.
    Each counts its barriers in its rank's word of ``sync`` (from 0: ``post``)."""
    mine = load(sync, rank * STRIDE) + 1
    store(sync, rank * STRIDE, mine)
    for other in range(parts):
        while load(sync, other * STRIDE) < mine:
            pass


@numba.njit(nogil=True, cache=True)
def post(ctrl, sync, lanes, job, woken):
    """Post ``job`` to the lanes spinning now, ranked 1, 2, ... after the caller (rank 0), and
    return how many lanes run it. A sleeping lane does not wait for its thread's wake-up:
    it is marked WAKING and ``woken[lane] = 1`` (the caller then wakes the thread, which spins
    for the next post); ``woken[0]`` counts them. A lane still finishing the last job (GO) is
    waited for. The barrier counts of this job's ranks start from 0: every lane of the last
    job has left its body (its state is no longer GO)."""
    store(ctrl, JOB, job)
    woken[0] = 0
    parts = 1
    for lane in range(1, lanes):
        at = lane * STRIDE
        woken[lane] = 0
        while True:
            state = load(ctrl, at)
            if state == SLEEP:  # only the poster moves a lane out of SLEEP
                store(ctrl, at, WAKING)
                woken[lane] = 1
                woken[0] += 1
                break
            if state == WAKING:
                break
            if state == SPIN and swap(ctrl, at, SPIN, CLAIMED):
                store(ctrl, at + 1, parts)
                parts += 1
                break
    store(ctrl, PARTS, parts)
    for rank in range(parts):
        store(sync, rank * STRIDE, 0)
    for lane in range(1, lanes):
        if load(ctrl, lane * STRIDE) == CLAIMED:
            store(ctrl, lane * STRIDE, GO)
    return parts


@numba.njit(nogil=True, cache=True)
def spin(word, count):
    """``count`` atomic reads of ``word[0]``, as a spinning lane makes (to time one)."""
    total = 0
    for _ in range(count):
        total += load(word, 0)
    return total
