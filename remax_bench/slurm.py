"""Stages as Slurm jobs (``runtime.executor: slurm``): the stage graph handed to the cluster's scheduler.

Every stage becomes one job, submitted through submitit, with ``--dependency=afterok:<its inputs' jobs>``, so
Slurm starts it once they ended well and cancels it (``--kill-on-invalid-dep=yes``) when one of them failed.
The job runs ``python -m trainers.<stage>`` once per rank: submitit starts its tasks with ``srun``, one per GPU
(or CPU rank) on each of ``runtime.num_nodes`` nodes, and each task maps what srun set (SLURM_PROCID,
SLURM_LOCALID, SLURM_NTASKS, the job's first node) to the RANK, LOCAL_RANK, WORLD_SIZE and MASTER_ADDR that
torch.distributed reads; no launcher and no pdsh in between.

Time limits and pre-emption, with the stage's exit-code contract (core/stage.py, EXIT_RESUMABLE):

    Slurm                                 the stage                                       the job
    SIGUSR1, signal_lead_s before the     checkpoints at the end of its iteration, exits  requeues itself
    time limit (--signal=USR1@N)          EXIT_RESUMABLE                                  (scontrol requeue)
    SIGTERM: scontrol requeue, a          the same                                        Slurm requeues it
    pre-emption that requeues                                                             (or ends it: scancel)

A requeued job starts the same stage with the same config, which goes on from its newest checkpoint. Results
land in the usual layout (``report`` and ``check`` read them unchanged); the job ids are kept in
``<results>/<suite>/slurm/jobs.json`` for ``remax-bench status`` and for a later ``run``, which follows a job
that is still queued or running instead of submitting the stage again.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from remax_bench import devices
from remax_bench.core import results
from remax_bench.outcome import Outcome

# A job in one of these states will not run again (PREEMPTED only when it stays so: a requeued one moves on).
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED", "SPECIAL_EXIT", "REVOKED"}
PORT_BASE, PORT_SPAN = 15000, 20000  # a multi-rank job's master port: the same on every rank, from its job id


# -- preflight -------------------------------------------------------------------------------------------
def problems(runtime) -> list[str]:
    """What stops a Slurm run before anything is submitted, one line each."""
    found = []
    try:
        import submitit  # noqa: F401
    except ImportError:
        found.append("runtime.executor: 'slurm' needs the submitit package: pip install 'remax-bench[slurm]'")
    for tool in ("sbatch", "squeue", "scontrol"):
        if shutil.which(tool) is None:
            found.append(f"runtime.executor: 'slurm' but {tool} is not on PATH (run from a Slurm login node, or set "
                         "runtime.executor: local)")
    if found:
        return found
    answer = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60)
    if answer.returncode != 0:
        return [f"runtime.executor: 'slurm' but the cluster does not answer: {answer.stderr.strip()[:300]}"]
    partitions = [p.rstrip("*") for p in answer.stdout.split()]
    wanted = runtime.slurm.partition
    if wanted and wanted not in partitions:
        found.append(f"runtime.slurm.partition: unknown partition {wanted!r}; this cluster has "
                     f"{', '.join(partitions) or 'none'}")
    gpus = runtime.slurm.gpus_per_node
    if gpus is not None and runtime.device == "cuda" and gpus < runtime.num_gpus:
        found.append(f"runtime.slurm.gpus_per_node: {gpus} GPUs for runtime.num_gpus={runtime.num_gpus} ranks per node")
    return found


# -- what a job asks for ---------------------------------------------------------------------------------
def job_parameters(stage: str, runtime, job_name: str, dependencies: list[str]) -> dict:
    """submitit's SlurmExecutor parameters for one stage: its nodes, tasks (ranks), GPUs and CPUs, the time limit,
    the warning signal, requeue and the afterok dependencies."""
    settings = runtime.slurm
    ranks = devices.ranks_per_node(stage, runtime)
    gpus = settings.gpus_per_node if settings.gpus_per_node is not None else (
        runtime.num_gpus if runtime.device != "cpu" else 0)
    extra = {"signal": f"USR1@{settings.signal_lead_s}", "requeue": True, "kill_on_invalid_dep": "yes",
             "time": str(settings.time_limit), **settings.sbatch_options()}
    if dependencies:
        extra["dependency"] = "afterok:" + ":".join(dependencies)
    params = {"job_name": job_name, "nodes": 1 if stage == "eval" else runtime.num_nodes, "ntasks_per_node": ranks,
              "stderr_to_stdout": True, "additional_parameters": extra, "setup": list(settings.setup),
              # One rank that fails ends the step: the others would wait in a collective for it.
              "srun_args": ["--kill-on-bad-exit=1"]}
    if gpus:
        params["gpus_per_node"] = 1 if stage == "eval" else gpus
    if settings.cpus_per_node:
        params["cpus_per_task"] = max(1, settings.cpus_per_node // ranks)
    for name in ("partition", "account", "qos", "mem"):
        if getattr(settings, name):
            params[name] = getattr(settings, name)
    return params


def describe_job(stage: str, runtime) -> str:
    """What one stage's job asks for, in words (the dry run prints it)."""
    params = job_parameters(stage, runtime, "", [])
    extra = params["additional_parameters"]
    parts = [f"{params['nodes']} node(s) x {params['ntasks_per_node']} task(s)"]
    if params.get("gpus_per_node"):
        parts.append(f"{params['gpus_per_node']} GPU(s) per node")
    if params.get("cpus_per_task"):
        parts.append(f"{params['cpus_per_task']} CPU(s) per task")
    parts += [f"partition {params.get('partition', '(default)')}", f"time limit {extra['time']}",
              f"SIGUSR1 {runtime.slurm.signal_lead_s} s before it"]
    return "Slurm job: " + ", ".join(parts)


# -- inside the job ----------------------------------------------------------------------------------------
def rank_environment() -> dict[str, str]:
    """torch.distributed's variables from what srun set for this task; none for a one-task job. The master is
    rank 0's node, the first of the job's node list (submitit reads Slurm's compressed form, node[01-04])."""
    from submitit.slurm.slurm import SlurmJobEnvironment

    slurm = SlurmJobEnvironment()
    if slurm.num_tasks <= 1:
        return {}
    return {"RANK": str(slurm.global_rank), "LOCAL_RANK": str(slurm.local_rank), "WORLD_SIZE": str(slurm.num_tasks),
            "MASTER_ADDR": slurm.hostnames[0], "MASTER_PORT": str(PORT_BASE + int(slurm.job_id) % PORT_SPAN)}


def task_command(module: str, config_path: Path, final: Path) -> list[str]:
    """What each task of a stage's job runs: the stage itself, once per rank (srun started the ranks)."""
    return [sys.executable, "-m", module, "--config", str(config_path), "--out", str(final)]


@dataclass
class StageJob:
    """What a stage's job runs on each of its tasks: the stage, with its rank, its signals and its log."""

    command: list[str]
    log_path: str
    final_dir: str

    def __call__(self) -> str:
        from remax_bench.core.stage import EXIT_RESUMABLE
        from remax_bench.local_executor import RUNNER_PID_ENV, _die_with_parent

        ranks = rank_environment()
        rank, world = int(ranks.get("RANK", "0")), ranks.get("WORLD_SIZE", "1")
        log_path = Path(self.log_path)
        if rank:
            log_path = log_path.with_name(f"{log_path.stem}.rank{rank}.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        job, attempt = os.environ.get("SLURM_JOB_ID", "?"), os.environ.get("SLURM_RESTART_COUNT", "0")
        received: list[int] = []
        child: list[subprocess.Popen] = []

        def forward(signum, frame):  # Slurm signals every process of the step; forwarding makes sure
            received.append(signum)
            _send(child, signum)

        for signum in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(signum, forward)
        with open(log_path, "a", buffering=1) as log:
            where = f", rank {rank} of {world}" if ranks else ""
            log.write(f"[slurm] job {job}, attempt {int(attempt) + 1}, on {socket.gethostname()}{where}\n")
            env = {**os.environ, **ranks, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
                   RUNNER_PID_ENV: str(os.getpid())}
            child.append(subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          preexec_fn=_die_with_parent))
            while True:
                try:
                    code = child[0].wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    if received:  # again: a stage still importing ignores SIGUSR1 until it takes it
                        _send(child, received[-1])
        final = Path(self.final_dir)
        if code == 0:
            if rank == 0 and results.is_complete(final):
                (final / "stage.log").write_text(Path(self.log_path).read_text())
                results.discard(results.failed_dir(final))
            return "completed"
        if code == EXIT_RESUMABLE:
            if signal.SIGUSR1 in received and rank == 0:
                # The time limit is near: the checkpoint is written; the job goes back to the queue and goes on.
                with open(log_path, "a") as log:
                    log.write(f"[slurm] job {job}: warned of its time limit, the stage checkpointed; requeued\n")
                subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
            sys.exit(EXIT_RESUMABLE)
        raise RuntimeError(f"stage exited with code {code}; its log: {log_path}")


def _send(child: list[subprocess.Popen], signum: int) -> None:
    for process in child:
        try:
            process.send_signal(signum)
        except ProcessLookupError:
            pass


# -- asking Slurm ------------------------------------------------------------------------------------------
@dataclass
class JobState:
    state: str
    reason: str = ""
    exit_code: str = ""

    def describe(self, job_id: str) -> str:
        text = f"Slurm job {job_id} {self.state}"
        details = [d for d in (self.reason if self.reason not in ("", "None") else "",
                               f"exit code {self.exit_code}" if self.exit_code not in ("", "0:0") else "") if d]
        return text + (f" ({', '.join(details)})" if details else "")


def job_states(job_ids: list[str]) -> dict[str, JobState]:
    """Each job's state and Slurm's reason, from squeue (queued, running and recently ended jobs)."""
    if not job_ids:
        return {}
    answer = subprocess.run(["squeue", "-h", "--states=all", "-j", ",".join(job_ids), "-o", "%i|%T|%r"],
                            capture_output=True, text=True, timeout=120)
    states = {}
    for line in answer.stdout.splitlines():
        job_id, state, reason = (line.split("|") + ["", ""])[:3]
        if job_id.strip() in job_ids:
            states[job_id.strip()] = JobState(state.strip(), reason.strip())
    return states


def ended_state(job_id: str, seen: JobState | None) -> JobState | None:
    """An ended job's state with its reason and exit code: sacct where the cluster keeps accounting (it says who
    cancelled a job), else scontrol, which remembers ended jobs for MinJobAge."""
    answer = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State,Reason,ExitCode"],
                            capture_output=True, text=True, timeout=120) if shutil.which("sacct") else None
    if answer is not None and answer.returncode == 0 and answer.stdout.strip():
        state, reason, code = (answer.stdout.strip().splitlines()[0].split("|") + ["", ""])[:3]
        return JobState(state, reason, code)
    shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=120)
    if shown.returncode == 0:
        fields = dict(item.split("=", 1) for item in shown.stdout.split() if "=" in item)
        return JobState(fields.get("JobState", "UNKNOWN"), fields.get("Reason", ""), fields.get("ExitCode", ""))
    return seen


class JobRecords:
    """``<results>/<suite>/slurm/jobs.json``: stage key -> its job id, config hash and submission time."""

    def __init__(self, path: Path):
        self.path = path
        self.jobs: dict = results.read_json(path) if path.is_file() else {}

    def get(self, key: str) -> dict | None:
        return self.jobs.get(key)

    def put(self, key: str, **record) -> None:
        self.jobs[key] = {**self.jobs.get(key, {}), **record}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        results.write_json(self.path, self.jobs)


# -- the runner's side -------------------------------------------------------------------------------------
@dataclass
class Submitted:
    item: object  # runner.StagePlan
    label: str
    job_id: str
    state: str = "SUBMITTED"
    log_offset: int = 0
    ended_polls: int = 0
    ended: bool = False  # its outcome is queued; it leaves `running` when the loop takes that


class SlurmExecutor:
    """``run``'s stages as Slurm jobs. A stage is handed over once its inputs' jobs are submitted (afterok)."""

    waits_for_inputs = False
    owns_stages = False  # a submitted job goes on in Slurm when `run` stops watching it

    def __init__(self, runner):
        self.runner = runner
        self.settings = runner.suite.runtime.slurm
        self.poll_s = self.settings.poll_s
        self.folder = (runner.root / "slurm").resolve()
        self.records = JobRecords(self.folder / "jobs.json")
        self.running: dict[str, Submitted] = {}
        self.events: list = []
        self.next_poll = 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass  # submitted jobs are Slurm's: they go on without this process

    def has_room(self) -> bool:
        return True

    def start(self, item, config: dict, label: str, after: list[str], reason: str) -> str | None:
        from remax_bench.core.stage import config_hash

        identity = config_hash(config)
        record = self.records.get(item.key)
        if record and record.get("config_hash") == identity:
            state = job_states([record["job_id"]]).get(record["job_id"])
            if state is not None and state.state not in ENDED:
                self.runner.echo(f"{label}: follows Slurm job {record['job_id']} ({state.state}), submitted earlier")
                self.running[item.key] = Submitted(item, label, record["job_id"], state.state)
                return None
        job_id = self.submit(item, config, [self.running[n].job_id for n in after])
        self.records.put(item.key, job_id=job_id, config_hash=identity,
                         submitted=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self.runner.echo(f"{label}: will run ({reason})")
        waits = f" after {', '.join(after)}" if after else ""
        self.runner.echo(f"{label}: submitted as Slurm job {job_id}{waits} (log: {self.runner.log_path(item)})")
        log = Path(self.runner.log_path(item))
        self.running[item.key] = Submitted(item, label, job_id, log_offset=log.stat().st_size if log.exists() else 0)
        return None

    def submit(self, item, config: dict, dependencies: list[str]) -> str:
        import submitit

        runner = self.runner
        config_path = runner.config_path(item).resolve()
        config_path.parent.mkdir(parents=True, exist_ok=True)
        results.write_json(config_path, config)
        final = runner.final_dir(item.key).resolve()
        command = task_command(item.module, config_path, final)
        job_name = f"{runner.suite.name}.{item.dirname}.seed{item.seed}"
        executor = submitit.SlurmExecutor(folder=self.folder)
        executor.update_parameters(**job_parameters(item.stage, runner.suite.runtime, job_name, dependencies))
        job = executor.submit(StageJob(command, str(runner.log_path(item).resolve()), str(final)))
        return str(job.job_id)

    def next_event(self, timeout: float | None = None):
        """The next ("line" | "note" | "done", key, payload); None after ``timeout`` seconds without one. Slurm
        is asked every poll_s seconds; the running stages' logs are read every second for their progress."""
        deadline = None if timeout is None else time.time() + timeout
        while not self.events:
            self.read_logs()
            if time.time() >= self.next_poll:
                self.poll()
                self.next_poll = time.time() + self.poll_s
            if self.events or (deadline is not None and time.time() >= deadline):
                break
            time.sleep(1.0)
        if not self.events:
            return None
        event = self.events.pop(0)
        if event[0] == "done":
            del self.running[event[1]]
        return event

    def read_logs(self) -> None:
        for key, job in self.running.items():
            log = Path(self.runner.log_path(job.item))
            if job.ended:
                continue
            if not log.exists() or log.stat().st_size <= job.log_offset:
                continue
            with open(log) as handle:
                handle.seek(job.log_offset)
                text = handle.read()
            complete = text[: text.rfind("\n") + 1]  # a line still being written waits for the next read
            job.log_offset += len(complete.encode())
            self.events += [("line", key, line + "\n") for line in complete.splitlines()]

    def poll(self) -> None:
        watched = {key: job for key, job in self.running.items() if not job.ended}
        states = job_states([job.job_id for job in watched.values()])
        for key, job in watched.items():
            state = states.get(job.job_id)
            if state is not None and state.state not in ENDED:
                if state.state != job.state:
                    why = f" ({state.reason})" if state.reason not in ("", "None") else ""
                    self.events.append(("note", key, f"Slurm job {job.job_id} {state.state}{why}"))
                job.state, job.ended_polls = state.state, 0
                continue
            job.ended_polls += 1
            if state is not None and state.state == "PREEMPTED" and job.ended_polls < 3:
                continue  # pre-empted with requeue: it goes back to PENDING
            self.read_logs()
            job.ended = True
            outcome = self.outcome(key, job, ended_state(job.job_id, state))
            self.records.put(key, state=outcome.status, detail=outcome.detail)
            self.events.append(("done", key, outcome))

    def outcome(self, key: str, job: Submitted, state: JobState | None):
        from remax_bench.local_executor import failure_reason

        final = self.runner.final_dir(key)
        if results.is_complete(final):
            seconds = results.read_json(final / "summary.json").get("wall_time_s", 0.0) \
                if (final / "summary.json").is_file() else 0.0
            self.runner.echo(f"{job.label}: completed (Slurm job {job.job_id})")
            return Outcome(key, "completed", seconds, f"Slurm job {job.job_id}")
        slurm_says = state.describe(job.job_id) if state else f"Slurm job {job.job_id}: Slurm no longer knows it"
        if state is not None and state.reason == "DependencyNeverSatisfied":
            return Outcome(key, "blocked", detail=f"an input failed; {slurm_says}")
        log = self.runner.log_path(job.item)
        stage_says = failure_reason(log, 1) if log.exists() and "[error]" in log.read_text() else ""
        detail = f"{stage_says}; {slurm_says}" if stage_says else slurm_says
        self.runner.echo(f"{job.label}: FAILED: {detail} (log: {log})")
        return Outcome(key, "failed", detail=detail)

    def forward_stop(self) -> None:
        """A stop signal to `run` is not the jobs': Slurm signals them itself (time limits, pre-emption)."""

    def interrupt(self) -> list:
        """Ctrl-C, SIGTERM or SIGUSR1 to `run`: the watching stops, the jobs go on in Slurm."""
        ended = [payload for kind, key, payload in self.events if kind == "done"]
        return ended + [Outcome(key, "submitted", detail=f"Slurm job {job.job_id} {job.state}")
                        for key, job in self.running.items() if not job.ended]
