"""``python -m loadtests.ipc_cost``: the control-message round trip between two processes, by
``multiprocessing.connection`` and by pyzmq (DEALER/ROUTER over ``ipc://``, ``zmq.asyncio`` on the
client), the client on an asyncio loop as an HTTP worker is.

An echo process answers each small pickled tuple (the shape of an ``infer`` message) with
another; the client keeps 1 or 64 messages in flight. Prints wall time and the client's CPU per
message for each library, alternating. This measurement chose the service's IPC library.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import pickle
import tempfile
import time
from multiprocessing.connection import Connection, Pipe

MESSAGE = ("infer", 123456, "digits", [1, 2], 1234.5)


def echo_connection(conn: Connection) -> None:
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except EOFError:
            return
        conn.send_bytes(pickle.dumps(("done", message[1])))


def echo_zmq(address: str) -> None:
    import zmq

    sock = zmq.Context().socket(zmq.ROUTER)
    sock.bind(address)
    while True:
        ident, data = sock.recv_multipart()
        if data == b"stop":
            return
        sock.send_multipart([ident, pickle.dumps(("done", pickle.loads(data)[1]))])


async def _client(send, receive, count: int, inflight: int) -> tuple[float, float]:
    sent = got = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while got < count:
        while sent < count and sent - got < inflight:
            await send(pickle.dumps(MESSAGE))
            sent += 1
        pickle.loads(await receive())
        got += 1
    return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count


async def via_connection(conn: Connection, count: int, inflight: int) -> tuple[float, float]:
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()

    def readable() -> None:
        while conn.poll():
            queue.put_nowait(conn.recv_bytes())

    async def send(data: bytes) -> None:
        conn.send_bytes(data)

    loop.add_reader(conn.fileno(), readable)
    try:
        return await _client(send, queue.get, count, inflight)
    finally:
        loop.remove_reader(conn.fileno())


async def via_zmq(address: str, count: int, inflight: int) -> tuple[float, float]:
    import zmq
    import zmq.asyncio

    sock = zmq.asyncio.Context().socket(zmq.DEALER)
    sock.connect(address)
    result = await _client(sock.send, sock.recv, count, inflight)
    await sock.send(b"stop")
    return result


def measure(kind: str, count: int, inflight: int, workdir: str) -> tuple[float, float]:
    ctx = multiprocessing.get_context("spawn")
    if kind == "connection":
        ours, theirs = Pipe()
        echo = ctx.Process(target=echo_connection, args=(theirs,))
        echo.start()
        result = asyncio.run(via_connection(ours, count, inflight))
        ours.close()
    else:
        address = f"ipc://{workdir}/echo-{os.getpid()}"
        echo = ctx.Process(target=echo_zmq, args=(address,))
        echo.start()
        result = asyncio.run(via_zmq(address, count, inflight))
    echo.join(5)
    if echo.is_alive():
        echo.kill()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ipc-cost-") as workdir:
        for inflight in (1, 64):
            for _ in range(args.rounds):
                for kind in ("connection", "zmq"):
                    wall_s, cpu_s = measure(kind, args.messages, inflight, workdir)
                    print(f"{kind:10} in flight {inflight:2}: {wall_s * 1e6:6.1f} us/message, "
                          f"client CPU {cpu_s * 1e6:5.1f} us/message")  # fmt: skip
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
