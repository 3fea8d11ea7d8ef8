"""Can a grpc.aio server end one call whose reply waits for a reader that never reads?

    uv run python bench/stalled_write.py [MODE ...]

For each way of ending it (MODE: all by default), a fresh grpc.aio server in a process of
its own (malloc handing freed memory back: ``MALLOC_TRIM_THRESHOLD_`` and
``MALLOC_MMAP_THRESHOLD_`` at 1 MiB) registers one method as the servicer does (a
stream-stream handler of bytes), reads the request and writes a 60 MB reply to
``H2GrpcClient(port, window=0)``, which never opens its window. 1.5 s into the write the
server tries MODE; the client watches its stream for 8 s and then disconnects. One line
per mode: how the write ended and when the handler returned (before or after the client
left), what the client saw (trailers, RST_STREAM or nothing), and the server's resident
memory before the write, at the end of the watch and 2 s after the client left.
docs/running-safely.md ("Readers that never read") gives the findings, and
service/sending.py what the server does instead.

Modes: ``none`` (the client's disconnect ends it), ``cancel`` (the handler's task is
cancelled), ``abort`` (``context.abort`` from another task), ``cancel-then-abort`` (the
handler aborts once its write is cancelled), ``status-then-cancel`` (``set_code`` and
``set_details`` first).
"""

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.h2_client import H2GrpcClient
from bench.ports import free_port

MODES = ("none", "cancel", "abort", "cancel-then-abort", "status-then-cancel")
REPLY_BYTES = 60_000_000
TRY_AFTER_S = 1.5
WATCH_S = 8
MALLOC = {"MALLOC_TRIM_THRESHOLD_": str(2**20), "MALLOC_MMAP_THRESHOLD_": str(2**20)}


def resident_mib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS"))


def serve(mode: str, port: int) -> None:
    """The server's side (run in its own process): prints ``key=value`` lines."""

    def say(key: str, value) -> None:
        print(f"{key}={time.monotonic():.3f},{value}", flush=True)

    async def handler(_requests, context):
        await context.read()
        reply = b"\x01" * REPLY_BYTES  # resident, unlike zeros
        say("before_write", resident_mib())
        task, loop = asyncio.current_task(), asyncio.get_running_loop()

        async def abort_meanwhile():
            await asyncio.sleep(TRY_AFTER_S)
            try:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "stalled")
            except Exception as error:
                say("abort_raised", f"{type(error).__name__}: {error}")

        if mode == "abort":
            loop.create_task(abort_meanwhile())
        elif mode != "none":
            if mode == "status-then-cancel":
                context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
                context.set_details("stalled")
            loop.call_later(TRY_AFTER_S, task.cancel)
        try:
            await context.write(reply)
            say("write", "returned")
        except asyncio.CancelledError:
            say("write", "cancelled")
            if mode == "cancel-then-abort":
                del reply
                try:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "stalled")
                except Exception as error:
                    say("abort_raised", f"{type(error).__name__}: {error}")
            raise
        except Exception as error:
            say("write", f"raised {type(error).__name__}")
        finally:
            say("handler", "returned")

    async def main():
        server = grpc.aio.server()
        method = grpc.stream_stream_rpc_method_handler(handler)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("probe.Stall", {"Write": method})]
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        say("ready", resident_mib())
        while True:  # report memory until stopped
            await asyncio.sleep(0.25)
            say("rss", resident_mib())

    asyncio.run(main())


def probe(mode: str) -> str:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, str(port)],
        env={**os.environ, **MALLOC},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = iter(server.stdout.readline, "")
        next(line for line in lines if line.startswith("ready="))
        with H2GrpcClient(port, window=0) as client:
            stream = client.start_call("/probe.Stall/Write", b"x")
            client.pump(lambda: False, time.monotonic() + WATCH_S)
            state = client.streams[stream]
        left_at = time.monotonic()  # CLOCK_MONOTONIC: the same clock in both processes
        waiting = left = 0
        for line in lines:  # the server's account, until 2 s after the client left
            key, _, value = line.strip().partition("=")
            at, _, value = value.partition(",")
            when = "before" if float(at) < left_at else "after"
            if key != "rss":
                print(f"  {mode}: server {key}: {value} ({when} the client left)")
            elif when == "before":
                waiting = int(value)  # the last sample before the client left
            elif float(at) > left_at + 2:
                left = int(value)
                break
        seen = (
            f"trailers {state.grpc_status}"
            if state.trailers
            else f"RST_STREAM {state.reset_code}"
            if state.reset_code is not None
            else "nothing"
        )
        return (
            f"{mode:20s} client saw {seen}, {state.data_bytes} bytes in {WATCH_S} s; server RSS "
            f"then {waiting} MiB, 2 s after the client left {left} MiB"
        )
    finally:
        server.terminate()
        server.wait()


def main() -> int:
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modes", nargs="*", help=f"some of {', '.join(MODES)} (default: all)")
    for mode in parser.parse_args().modes or MODES:
        print(probe(mode), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
