"""A local judge server: ``vllm serve MODEL --host 127.0.0.1 --port P ...`` started and always stopped by us.

``ManagedServer`` is a context manager: it starts the command in its own process group, polls
``GET /health`` and ``GET /v1/models`` until both answer 200 (or the process dies, or the startup timeout
passes), and on exit -- normal or not -- sends SIGTERM to the group, waits, then SIGKILL. The server's
output goes to a log file whose tail is quoted when it fails to come up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from remax_bench.evaluation.common import EvalError

LOCAL_HOST = "127.0.0.1"


def vllm_serve_command(model: str, port: int, serve_args: list[str] | tuple[str, ...] = (),
                       host: str = LOCAL_HOST, python: str | None = None) -> list[str]:
    """The command line of the local judge server, as a list (no shell).

    vLLM's OpenAI-compatible server is started with this environment's own Python (``python -m``), never
    whatever ``vllm`` is first on PATH: that may belong to another environment, and the CPU build's console
    script fails its own version lookup."""
    return [python or sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--host", host, "--port", str(int(port)), *[str(a) for a in serve_args]]


def _get(url: str, timeout_s: float) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - 127.0.0.1 only
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0  # not listening yet


def _tail(path: Path | None, lines: int = 20) -> str:
    if path is None or not path.is_file():
        return ""
    text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    return "\n".join(text)


class ManagedServer:
    def __init__(self, command: list[str], host: str = LOCAL_HOST, port: int = 8011, startup_timeout_s: float = 900.0,
                 poll_interval_s: float = 1.0, stop_timeout_s: float = 30.0, log_path: str | Path | None = None,
                 env: dict | None = None):
        self.command = list(command)
        self.root = f"http://{host}:{port}"
        self.startup_timeout_s = startup_timeout_s
        self.poll_interval_s = poll_interval_s
        self.stop_timeout_s = stop_timeout_s
        self.log_path = Path(log_path) if log_path else None
        self.env = env
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API root."""
        return f"{self.root}/v1"

    def start(self) -> "ManagedServer":
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            # Its own process group: vllm serve starts worker processes, and stop() must reach them too.
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, **(self.env or {})})
        except FileNotFoundError as err:
            raise EvalError(f"cannot start the judge server {self.command[0]!r}: {err}; install vllm (the 'gpu' extra) "
                            "or choose another eval.judge.type") from None
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        return self

    def wait_until_healthy(self) -> None:
        start = time.time()
        deadline = start + self.startup_timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                raise EvalError(f"the judge server exited with code {code} before it was healthy "
                                f"(command: {' '.join(self.command)})\n{_tail(self.log_path)}")
            if _get(f"{self.root}/health", 5.0) == 200 and _get(f"{self.root}/v1/models", 5.0) == 200:
                self.startup_s = time.time() - start
                return
            if time.time() > deadline:
                raise EvalError(f"the judge server was not healthy after {self.startup_timeout_s:.0f}s "
                                f"(GET {self.root}/health; command: {' '.join(self.command)})\n{_tail(self.log_path)}")
            time.sleep(self.poll_interval_s)

    def stop(self) -> int | None:
        """SIGTERM to the group, wait, SIGKILL; returns the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                process.wait(10)
        return process.returncode

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)  # the group we created in start()
        except (ProcessLookupError, PermissionError):
            try:
                self.process.send_signal(sig)
            except ProcessLookupError:
                pass

    def __enter__(self) -> "ManagedServer":
        self.start()
        try:
            self.wait_until_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
