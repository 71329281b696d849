"""Stages as processes on this machine: up to ``--jobs`` at once, each on its own share of the devices.

Each stage is a subprocess (``python -m trainers.<stage>``, or the ``deepspeed`` launcher when it has several
ranks) whose output goes to ``logs/<stage>-seed<k>.log``; a thread per stage reads that output and hands the
runner's loop one event per line and one when the stage ends, so the loop waits on events, never on a timer.

Every stage runs in its own session (its own process group), so a stop reaches the launcher and every rank it
started, and only them: SIGUSR1 on a stop signal to the runner (each rank checkpoints and exits resumable,
EXIT_RESUMABLE in remax_bench/core/stage.py), SIGINT on Ctrl-C (a terminal's Ctrl-C no longer reaches them itself).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from remax_bench import devices
from remax_bench.core import results
from remax_bench.core.stage import EXIT_COMPLETED, EXIT_RESUMABLE, EXIT_SIGINT
from remax_bench.outcome import Outcome

RUNNER_PID_ENV = "REMAX_BENCH_RUNNER_PID"
INTERRUPT_GRACE_S = 30


@dataclass
class Running:
    item: object  # runner.StagePlan
    config: dict
    label: str
    process: subprocess.Popen
    share: devices.Share
    start: float


class LocalExecutor:
    """``run``'s stages on this machine. A stage starts once its inputs are complete (waits_for_inputs); they
    end with the run (owns_stages)."""

    waits_for_inputs = True
    owns_stages = True

    def __init__(self, runner, jobs: int = 1):
        self.runner, self.jobs = runner, jobs
        self.pool = devices.DevicePool.for_suite(runner.suite.runtime, jobs)
        self.events: queue.Queue = queue.Queue()
        self.running: dict[str, Running] = {}
        self.poll_s = 5.0  # only while a stage waits for GPUs held by another run
        self.interrupted = False  # Ctrl-C: whatever a stage's exit code, it did not end well

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for run in self.running.values():  # only after an error in the loop itself: no stage outlives it
            _signal_group(run.process, signal.SIGKILL)
            self.pool.give_back(run.share)

    def has_room(self) -> bool:
        return len(self.running) < self.jobs

    def start(self, item, config: dict, label: str, after: list[str], reason: str) -> str | None:
        """Start the stage (its inputs, ``after``, have ended); None once started, else why it waits (its GPUs
        are held by another run)."""
        runtime = self.runner.suite.runtime
        share = self.pool.take(devices.gpus_per_stage(item.stage, runtime))
        if isinstance(share, str):
            return share
        config_path = self.runner.config_path(item)
        config_path.parent.mkdir(parents=True, exist_ok=True)
        results.write_json(config_path, config)
        log_path = self.runner.log_path(item)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = self.runner.command(item, gpus=share.gpus or None, master_port=share.port)
        one_process = command[0] != "deepspeed"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
               RUNNER_PID_ENV: str(os.getpid()), **share.env(devices.ranks_per_node(item.stage, runtime), one_process)}
        if not one_process:
            env.pop("CUDA_VISIBLE_DEVICES", None)  # the launcher's --include names GPUs by their machine-wide index
        self.runner.echo(f"{label}: will run ({reason})")
        self.runner.echo(f"{label}: running{describe(share)} (log: {log_path})")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                   bufsize=1, pass_fds=share.fds, preexec_fn=_stage_preexec(share.cores),
                                   start_new_session=True)
        self.running[item.key] = Running(item, config, label, process, share, time.time())
        if self.runner.stopped_by:  # the stop came while it was being started
            _signal_group(process, signal.SIGUSR1)
        threading.Thread(target=self._pump, args=(item.key, process, log_path), daemon=True,
                         name=f"stage-{item.key}").start()
        return None

    def _pump(self, key: str, process: subprocess.Popen, log_path) -> None:
        """The stage's output into its log (a line at a time, so a killed runner loses nothing), and to the loop."""
        with open(log_path, "w", buffering=1) as log:
            for line in process.stdout:
                log.write(line)
                self.events.put(("line", key, line))
        self.events.put(("exit", key, process.wait()))

    def next_event(self, timeout: float | None = None):
        """The next ("line", key, text) or ("done", key, Outcome); None after ``timeout`` seconds without one."""
        try:
            kind, key, payload = self.events.get(timeout=timeout)
        except queue.Empty:
            return None
        if kind == "exit":
            return "done", key, self._finish(key, payload)
        return kind, key, payload

    def _finish(self, key: str, code: int):
        run = self.running.pop(key)
        self.pool.give_back(run.share)
        seconds = time.time() - run.start
        final = self.runner.final_dir(key)
        log_path = self.runner.log_path(run.item)
        if code == EXIT_COMPLETED and results.is_complete(final):
            (final / "stage.log").write_text(log_path.read_text())
            results.discard(results.failed_dir(final))  # an earlier failure is no longer this stage's state
            self.runner.echo(f"{run.label}: completed in {seconds:.1f}s")
            return Outcome(key, "completed", seconds)
        resumes = self.runner.resumes_from(run.item, run.config)
        if self.interrupted:
            return Outcome(key, "interrupted", seconds, f"Ctrl-C: {resumes}")
        if code == EXIT_RESUMABLE:
            return Outcome(key, "interrupted", seconds, f"stopped by {self.runner.stopped_by or 'a signal'}: {resumes}")
        if code in (EXIT_SIGINT, -signal.SIGINT):
            return Outcome(key, "interrupted", seconds, f"SIGINT: {resumes}")
        detail = failure_reason(log_path, code)
        self.runner.echo(f"{run.label}: FAILED after {seconds:.1f}s: {detail} (log: {log_path})")
        return Outcome(key, "failed", seconds, detail)

    def forward_stop(self) -> None:
        """A stop signal to the runner: SIGUSR1 to every running stage's process group (every rank checkpoints
        at the end of its iteration and exits resumable; the deepspeed launcher ignores it)."""
        for run in list(self.running.values()):
            _signal_group(run.process, signal.SIGUSR1)

    def interrupt(self) -> list:
        """Ctrl-C: every running stage records itself as interrupted and stops at once; their outcomes."""
        self.interrupted = True
        for run in self.running.values():
            _signal_group(run.process, signal.SIGINT)
        outcomes = []
        deadline = time.time() + INTERRUPT_GRACE_S
        while self.running:
            event = self.next_event(timeout=max(0.1, deadline - time.time()))
            if event is None:  # past the grace period
                for run in self.running.values():
                    _signal_group(run.process, signal.SIGKILL)
                deadline = time.time() + INTERRUPT_GRACE_S
                continue
            if event[0] == "done":
                outcomes.append(event[2])
        return outcomes


def describe(share: devices.Share) -> str:
    parts = []
    if share.gpus:
        parts.append(f"GPU {','.join(map(str, share.gpus))}")
    if share.cores is not None:
        parts.append(f"cores {','.join(map(str, share.cores))}")
    return f" on {', '.join(parts)}" if parts else ""


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    """A signal to the stage and every process it started (its own process group)."""
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass  # already gone


def _stage_preexec(cores: list[int] | None):
    def preexec() -> None:
        _die_with_parent()
        if cores is not None:
            os.sched_setaffinity(0, cores)  # inherited by the launcher's ranks
    return preexec


def _die_with_parent() -> None:
    """In the stage process before exec: the kernel kills it when the runner dies, even by SIGKILL, so a
    stage never keeps a GPU busy and races a re-run. (Stages also watch the runner's pid as a fallback.)
    SIGUSR1 is ignored until a stage takes it (ignoring survives exec): the deepspeed launcher, which has no
    handler of its own for it, keeps running while its ranks checkpoint."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def failure_reason(log_path, code: int) -> str:
    text = log_path.read_text() if log_path.exists() else ""
    errors = [line.strip() for line in text.splitlines() if line.startswith("[error]")]
    if errors:
        return errors[0].removeprefix("[error]").strip()
    if code < 0:
        return f"killed by signal {-code}"
    tail = text.strip().splitlines()[-1:] or ["no output"]
    return f"exit code {code}: {tail[0][:200]}"
