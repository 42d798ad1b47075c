"""Run the sidecar (``python -m rerankd_server``) as a subprocess on a free loopback port.

The demo (``rerankd demo``) and the integration tests talk to the server as a deployment
does: a separate process with its own event loop and signal handling, started by its CLI.
Readiness is what a load balancer sees, grpc.health.v1 reporting SERVING for the rerank
service, awaited with a health ``Watch`` (no sleep-polling); a process that exits or never
gets ready fails with its own output.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

#: The health service name whose SERVING status means the model is loaded and requests are accepted.
RERANK_SERVICE = "rerankd.v1.RerankService"


class ServerStartError(RuntimeError):
    """The server exited, or did not report SERVING in time; the message holds its output."""


class ServerProcess:
    """A running sidecar subprocess; a context manager that stops it on exit.

    Attributes:
        proc: The subprocess (stdout and stderr go together to a temporary file; see ``output``).
        target: ``"127.0.0.1:PORT"``, to pass to a gRPC channel or client.
    """

    def __init__(self, proc: subprocess.Popen[bytes], target: str, log: IO[bytes]) -> None:
        self.proc = proc
        self.target = target
        self._log = log
        self._final_output: str | None = None

    def output(self) -> str:
        """Everything the server printed (stdout and stderr, interleaved), also after it stopped."""
        if self._final_output is not None:
            return self._final_output
        self._log.flush()
        return Path(self._log.name).read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the process to exit; return its exit code.

        A process already gone just reports its code. Raises TimeoutError (after killing it) when
        it outlives ``timeout`` seconds: a server that ignores SIGTERM is a bug tests must see.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._close_log()
                raise TimeoutError(
                    f"server did not exit within {timeout}s of {sig.name}; killed it. "
                    f"Output:\n{self.output()}"
                ) from None
        self._close_log()
        return self.proc.returncode

    def _close_log(self) -> None:
        """Keep the output in memory and delete the temporary file (once the process is gone)."""
        if self._final_output is None:
            self._final_output = self.output()
            self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _check_port_free(port: int) -> None:
    """Refuse a port some other server holds: its health would answer SERVING for ours, which
    would then exit (a port is never shared) while the caller believed it ready."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ServerStartError(f"127.0.0.1:{port} is not free: {exc}") from None


def start_server(
    model_path: str | os.PathLike[str],
    *extra_args: str,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 120.0,
    port: int | None = None,
) -> ServerProcess:
    """Start ``python -m rerankd_server --model MODEL --host 127.0.0.1 --port PORT *extra_args``.

    Args:
        model_path: Model folder (or hub id) for ``--model``.
        extra_args: Further CLI arguments, e.g. ``"--max-batch-tokens", "256"``. Metrics are
            off (``--metrics-port 0``) unless these name a ``--metrics-port``.
        env: Variables added to (and overriding) this process's environment for the child.
        ready_timeout: Seconds to wait for health SERVING on ``RERANK_SERVICE``.
        port: The port to listen on (default: a free one), e.g. to restart on the same port;
            it must be free.

    Returns:
        The running server, ready for requests. Stop it with ``stop()`` or a ``with`` block.

    Raises:
        ServerStartError: ``port`` is not free; or the process exited before it was ready, or
            was not ready in time (it is then killed); the message carries its exit code and
            output.
    """
    if port:
        _check_port_free(port)
    port = port or free_port()
    argv = [
        sys.executable,
        "-m",
        "rerankd_server",
        "--model",
        str(model_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra_args,
    ]
    if "--metrics-port" not in extra_args:
        argv += ["--metrics-port", "0"]  # several servers may run at once; opt in to metrics
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    # A file, not a pipe: a chatty server can never block on a full pipe nobody reads. The
    # ServerProcess owns and closes it.
    log = tempfile.NamedTemporaryFile(prefix="rerankd-server-", suffix=".log")  # noqa: SIM115
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=child_env)
    server = ServerProcess(proc, f"127.0.0.1:{port}", log)
    deadline = time.monotonic() + ready_timeout
    try:
        failure = _wait_until_serving(server, ready_timeout)
    except BaseException:  # e.g. KeyboardInterrupt: never leave the child running
        proc.kill()
        server.stop()
        raise
    if failure is None:
        return server
    timed_out = time.monotonic() >= deadline
    # A server that gives up (no model, a taken port) closes its port before it exits, and on
    # a loaded machine its teardown (torch's included) takes seconds: wait for its exit code
    # rather than kill it and report a hang.
    patience = 1.0 if timed_out else 30.0
    try:
        code = proc.wait(timeout=patience)
        what = f"exited with code {code}"
    except subprocess.TimeoutExpired:
        proc.kill()
        what = (
            f"still running after {ready_timeout}s without SERVING, killed"
            if timed_out
            else f"stopped serving but still running {patience:.0f}s later, killed"
        )
    server.stop()
    raise ServerStartError(f"{shlex.join(argv)}: {what}; {failure}. Output:\n{server.output()}")


def _wait_until_serving(server: ServerProcess, timeout: float) -> str | None:
    """Wait for health SERVING on RERANK_SERVICE; return None then, or why it never came.

    ``wait_for_ready`` rides out the time before the port is bound; the Watch stream then reports
    every status change (NOT_SERVING or SERVICE_UNKNOWN while the model loads). A helper thread
    cancels the stream as soon as the process exits, so a crash is reported at once, not at the
    deadline.
    """
    request = health_pb2.HealthCheckRequest(service=RERANK_SERVICE)
    with grpc.insecure_channel(server.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            request, timeout=timeout, wait_for_ready=True
        )

        def cancel_when_exited() -> None:
            server.proc.wait()
            watch.cancel()

        threading.Thread(target=cancel_when_exited, daemon=True).start()
        last = "none"
        try:
            for response in watch:
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    watch.cancel()
                    return None
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        except grpc.RpcError as exc:
            return f"health Watch ended with {exc.code().name}, last status {last}"
        return f"health Watch stream closed, last status {last}"
