"""Descriptors received over a runtime channel are not inherited by children.

The api runs on uvloop, whose subprocess spawn ignores close_fds: every
inheritable descriptor of the api reaches every compiler it starts. Worker
connections arrive over the channel with SCM_RIGHTS; had they stayed
inheritable, a server with a few dozen modules would hand hundreds of
sockets to each gcc, whose linker then fails with "out of file descriptors".
"""

from __future__ import annotations

import asyncio
import os
import socket

from runtime.channel import Channel, Lines, recv_blocking, send_blocking


def test_recv_blocking_makes_received_descriptors_non_inheritable() -> None:
    a, b = socket.socketpair()
    x, y = socket.socketpair()
    with a, b, x, y:
        send_blocking(a, {"op": "connect"}, [x.fileno()])
        batch = recv_blocking(b, Lines(), accept_fds=True)
        assert batch is not None and len(batch) == 1
        msg, fds = batch[0]
        assert "connect" == msg["op"] and 1 == len(fds)
        try:
            assert os.get_inheritable(fds[0]) is False
        finally:
            os.close(fds[0])


def test_channel_makes_received_descriptors_non_inheritable() -> None:
    async def run() -> list[bool]:
        a, b = socket.socketpair()
        x, y = socket.socketpair()
        got: asyncio.Future = asyncio.get_running_loop().create_future()
        channel = Channel(b, lambda msg, fds: got.done() or got.set_result(fds), accept_fds=True)
        try:
            send_blocking(a, {"op": "connect"}, [x.fileno(), y.fileno()])
            fds = await asyncio.wait_for(got, 10)
            flags = [os.get_inheritable(fd) for fd in fds]
            for fd in fds:
                os.close(fd)
            return flags
        finally:
            channel.close()
            for s in (a, x, y):
                s.close()

    assert [False, False] == asyncio.run(run())
