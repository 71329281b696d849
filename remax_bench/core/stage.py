"""The stage framework: what every stage shares, whatever it trains or evaluates: its command line, the
results directory it writes (partial, then renamed; failed runs kept aside), seeds, devices, ranks, checks,
measurements and manifest.

A stage module defines ``train(run: StageRun) -> dict`` (the stage's own summary figures) and ends with
``if __name__ == "__main__": stage_main("<stage>", train)``. The trainers and the eval stage depend on this
module; it depends on none of them.

A training stage declares its training state once its engines are built, ``first = run.resume(state, total)``,
starts at iteration ``first`` (0, or where the newest sound checkpoint of its config left off), and calls
``run.end_iteration(done)`` after each iteration: a checkpoint is written there when runtime.checkpoint_every or
runtime.checkpoint_interval_s says one is due, or when a stop signal came (remax_bench/core/checkpoint.py).

Signals and exit codes: the contract between a stage and whatever starts it (the runner, the deepspeed launcher,
a batch scheduler), in this one place:

    signal             what the stage does                                                   exit code
    -                  runs to the end; the result directory is final                        0  EXIT_COMPLETED
    - (an error)       stops; the attempt's output moves to <seed dir>.failed                1  EXIT_FAILED
    SIGTERM, SIGUSR1   finishes the current iteration, writes a checkpoint, stops:           75 EXIT_RESUMABLE
                       interrupted and resumable (EX_TEMPFAIL of sysexits.h); the eval stage,
                       which trains nothing, stops at once and is redone
    SIGINT (Ctrl-C)    stops at once; a re-run resumes from the last checkpoint written      130 EXIT_SIGINT

Every rank takes the signal (or learns it from another rank at the end of the iteration) and the ranks checkpoint
together. After the last iteration a stop signal changes nothing: the stage completes. SIGUSR1 is what Slurm sends
before a time limit (``--signal=USR1@<seconds>``), SIGTERM what it and most schedulers send before pre-emption;
the runner forwards both (remax_bench/runner.py). A stage started again with the same config resumes: the console
and its log say "resumed from iteration N".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from remax_bench.core import algorithms, results
from remax_bench.core.checkpoint import CheckpointStore, Ranks, TrainingState, config_identity
from remax_bench.core.config import Suite, per_rank_batch
from remax_bench.core.global_batch import GlobalBatch
from remax_bench.core.identity import stage_identity, stage_reads
from remax_bench.core.metrics import MemoryTracker, PhaseTimer
from remax_bench.core.reads import ReadLog, ReadView
from remax_bench.core.trackers import RunName, Trackers, scalars

REPO_ROOT = Path(__file__).resolve().parents[2]
# DeepSpeed configs generated in this process, one per engine; the stage manifest records them.
ENGINE_CONFIGS: list[dict] = []
# The DeepSpeed engines of trained models in this process; a multi-rank stage compares their weights across ranks.
TRAINED_ENGINES: list = []


EXIT_COMPLETED, EXIT_FAILED, EXIT_RESUMABLE, EXIT_SIGINT = 0, 1, 75, 130
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StageError(RuntimeError):
    """A stage cannot go on; the message names the cause."""


class StageInterrupted(BaseException):
    """A stop signal was taken: the checkpoint is written, the stage ends resumable (not an error to catch)."""


class NonFiniteError(StageError):
    pass


def check_finite(name: str, value: torch.Tensor | float, step: int) -> None:
    finite = torch.isfinite(value).all().item() if isinstance(value, torch.Tensor) else math.isfinite(value)
    if not finite:
        raise NonFiniteError(
            f"{name} is not finite at step {step}; stopping (the last good checkpoint is kept). "
            "Lower the learning rate, enable reward clipping, or check the data."
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def process_rank() -> tuple[int, int]:
    """(global rank, local rank) as the deepspeed launcher sets them; (0, 0) for a single process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """Data-parallel ranks of this stage, as the deepspeed launcher sets them; 1 for a single process."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise StageError("runtime.device is 'cuda' but no CUDA device is available")
        local_rank = process_rank()[1]  # one GPU per process under the deepspeed launcher
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(requested)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "datasets", "deepspeed", "vllm", "alpaca-eval", "fschat", "remax-bench"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def git_sha() -> str | None:
    """The commit of the code that ran, in a checkout; None for an installed package (whose folder may sit
    inside some other repository, whose commit would say nothing about this code)."""
    if not (REPO_ROOT / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def config_hash(config: dict) -> str:
    """A stage config's identity: the suite fields its stage reads and its inputs (remax_bench.core.identity)."""
    return stage_identity(config)


def tracking_root(final_dir: Path, stage: str) -> Path:
    """Where a stage's trackers keep their files: the suite's results folder when the stage sits in the
    results layout (<root>/<stage>/seed<k>), else the folder its output goes into."""
    final_dir = Path(final_dir)
    in_layout = final_dir.parent.name == stage and final_dir.name.removeprefix("seed").isdigit()
    return results.suite_root_of(final_dir) if in_layout else final_dir.parent


# Set (tests do) to stop a stage at the first suite field it reads outside its declaration; otherwise the
# stage warns once per field, so a long run on a cluster is not lost to a declaration that fell behind.
STRICT_READS_ENV = "REMAX_BENCH_STRICT_READS"


class StageRun:
    """One stage and seed: its config, its (partial) output directory, its logs and measurements."""

    def __init__(self, stage: str, config: dict, out_dir: Path):
        self.stage = stage
        self.config = config
        self.full_suite = Suite.model_validate(config["suite"])
        # The stage reads its suite through a view that records every field: its identity holds only the fields
        # its declaration names (remax_bench.core.identity), so one read outside it must be known.
        self.reads = ReadLog(stage_reads(stage), self._undeclared_read)
        self.suite = ReadView(self.full_suite, self.reads)
        self.seed = int(config.get("seed", 0))
        self.final_dir = Path(out_dir)
        self.inputs: dict[str, Any] = results.resolve_inputs(config.get("inputs", {}), results.suite_root_of(self.final_dir))
        self.rank = process_rank()[0]
        self.world_size = world_size()
        self.batch_sizes: dict[str, dict[str, int]] = {}  # field -> global and per-rank size, for the manifest
        self.drawn: dict[str, list[list[int]]] = {}  # data name -> this rank's row indices, one list per batch
        self.generated_widths: list[int] = []  # response width of each generate call on this rank
        self.dir = results.partial_dir(self.final_dir)
        if self.rank != 0:
            # Under the deepspeed launcher every rank runs this stage; only rank 0 writes the results.
            self.dir = self.dir.with_name(f"{self.dir.name}.rank{self.rank}")
        self.device = resolve_device(self.suite.runtime.device)
        # Every statistic that crosses rows (loss token means, whitening, logged means) is taken here, over the
        # global batch, whatever the number of ranks.
        self.stats = GlobalBatch(self.world_size, self.device)
        self.memory = MemoryTracker(self.device)
        self.timer = PhaseTimer(self.device)
        self.start_time = time.time()
        self.component_bytes: dict[str, dict[str, int]] = {}
        self.model_dtypes: dict[str, str] = {}  # component -> dtype of its weights, as loaded
        self.manifest_extra: dict[str, Any] = {}  # stage-specific records (e.g. an online stage's matched budget)
        self.warnings: list[str] = []
        self.trackers = Trackers([])  # opened with the stage, on rank 0 only
        self._metrics_file = None
        self._last_log = 0.0
        # Checkpoints and resume: what this attempt continues, where it stands, and a stop signal once one comes.
        # The checkpoint schedule is read from the whole suite: it decides when state is saved, not what is trained,
        # so it is no part of the stage's identity (a resume may change it).
        runtime = self.full_suite.runtime
        self.checkpoints = CheckpointStore(results.checkpoints_dir(self.final_dir), Ranks(self.rank, self.world_size),
                                           runtime.keep_checkpoints, self.warn)
        self.state: TrainingState | None = None
        self.total_iterations = 0
        self.done = 0  # iterations done so far
        self.resumed_from: list[int] = []  # the iteration each resumed attempt started at
        self.checkpoint_records: list[dict] = []  # iteration, bytes and seconds of each checkpoint written
        self.newest_checkpoint: int | None = None  # the iteration a re-run would resume from
        self.trains = stage in algorithms.REGISTRY or stage in algorithms.PREPARATION_STAGES  # has iterations to resume
        self.stop_signal: str | None = None
        self.stop_during: int | None = None  # the iteration that was running when the stop signal came
        self._before = {"wall_time_s": 0.0, "peak_memory_bytes": 0}  # earlier attempts', up to their checkpoint
        self._last_checkpoint = time.monotonic()

    # -- files ---------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoint"

    def manifest(self, status: str, **extra: Any) -> dict:
        return {
            "stage": self.stage,
            "seed": self.seed,
            "status": status,
            "config": self.config,
            "config_hash": config_hash(self.config),
            "suite_hash": self.full_suite.config_hash(),
            "reads": sorted(self.reads.fields),
            "versions": package_versions(),
            "git_sha": git_sha(),
            "device": str(self.device),
            "device_name": (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                            else platform.processor() or platform.machine()),
            "torch_threads": torch.get_num_threads(),
            "command": sys.argv,
            "start": datetime.fromtimestamp(self.start_time, timezone.utc).isoformat(),
            "end": datetime.now(timezone.utc).isoformat() if status != "running" else None,
            "warnings": self.warnings,
            "deepspeed_configs": ENGINE_CONFIGS,
            "model_dtypes": self.model_dtypes,
            "data_parallel": {"world_size": self.world_size, "batch_sizes": self.batch_sizes},
            **self.manifest_extra,
            **extra,
        }

    def open(self) -> None:
        results.discard(self.dir)  # rebuilt: a resumed attempt takes its metrics rows from its checkpoint
        self.dir.mkdir(parents=True)
        manifest = self.manifest("running")
        results.write_json(self.dir / "manifest.json", manifest)
        if self.rank == 0:
            self.trackers = self.open_trackers(manifest)
        self._metrics_file = open(self.dir / "metrics.jsonl", "a", buffering=1)  # the stage is ready to train
        seed_everything(self.seed)
        online = self.stage in algorithms.REGISTRY and algorithms.get(self.stage).online
        if online and self.suite.shared.rollout_backend == "vllm":
            # vLLM's library is imported before the memory baseline, as torch's is: the peak counts the
            # engine's weights and KV cache, not the size of the library's code.
            import vllm  # noqa: F401
        self.memory.start()

    def open_trackers(self, manifest: dict) -> Trackers:
        """The suite's trackers for this stage and seed, given the run's hyperparameters and identity."""
        facts = {key: manifest[key] for key in ("stage", "seed", "config_hash", "suite_hash", "versions", "git_sha",
                                                "device", "device_name")}
        facts.update(suite_name=self.full_suite.name, world_size=self.world_size,
                     overrides=self.config.get("overrides") or [])
        name = RunName(self.full_suite.name, self.stage, self.seed, tracking_root(self.final_dir, self.stage))
        return Trackers(self.full_suite.runtime.trackers, name, self.full_suite.resolved(), facts, warn=self.warn)

    def log(self, step: int, **metrics: Any) -> None:
        """One line of metrics.jsonl (flushed at once, so a crash loses at most the current step), and the
        same figures to the trackers."""
        row = {"step": step, "wall_time_s": round(time.time() - self.start_time, 4), **metrics}
        row["rss_bytes"] = self.memory.current()
        row["peak_memory_bytes"] = self.memory.peak()  # the stage's peak so far, as its summary counts it
        self._metrics_file.write(json.dumps(row, default=float) + "\n")
        self.trackers.log(step, scalars({k: v for k, v in row.items() if k != "step"}))
        if time.time() - self._last_log > 2 or step == 0:
            # Machine-readable progress for the runner's live display (stderr goes to the stage log).
            shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
            print(results.progress_line(self.stage, step, shown), file=sys.stderr, flush=True)
            self._last_log = time.time()

    def _undeclared_read(self, field: str) -> None:
        message = (f"stage {self.stage} read suite field {field}, which its declaration in "
                   f"remax_bench/core/identity.py does not name: a change to it would not make the stage run again")
        if os.environ.get(STRICT_READS_ENV) == "1":
            raise StageError(message)
        self.warn(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        print(f"[warning] {message}", file=sys.stderr, flush=True)

    def record_dtype(self, component: str, model: torch.nn.Module) -> torch.nn.Module:
        """Note the dtype a component's weights hold (trained: fp32 master weights; frozen: the suite's)."""
        dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
        self.model_dtypes[component] = "/".join(dtypes)
        return model

    # -- data parallelism ------------------------------------------------------------------------
    def per_rank(self, field: str) -> int:
        """This rank's share of the suite's global batch size ``field`` (recorded in the manifest)."""
        global_size = self.suite.batch_size(field)
        size = per_rank_batch(global_size, self.world_size, field)
        self.batch_sizes[field] = {"global": global_size, "per_rank": size}
        return size

    def shard(self, name: str, indices: list[int]) -> list[int]:
        """This rank's contiguous share of one global batch of row indices; the draw is recorded so the summary
        can show that the ranks read disjoint rows."""
        per = len(indices) // self.world_size
        mine = list(indices[self.rank * per : (self.rank + 1) * per])
        self.drawn.setdefault(name, []).append(mine)
        return mine

    def data_parallel_summary(self) -> dict:
        """What each rank drew, gathered on every rank: rows per rank and rows drawn by more than one rank."""
        if self.world_size == 1 or not torch.distributed.is_initialized():
            return {}
        # The weights every rank ends with: data parallelism must leave them identical on all ranks.
        mine = {"drawn": self.drawn, "widths": self.generated_widths,
                "weights": [engine.weights_digest() for engine in TRAINED_ENGINES]}
        gathered: list = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, mine)
        draws = {}
        for name in sorted({n for g in gathered for n in g["drawn"]}):
            batches_by_rank = [g["drawn"].get(name, []) for g in gathered]
            # Within each global batch the ranks' rows must be disjoint; over several passes a row comes back.
            shared_batches = sum(
                1 for parts in zip(*batches_by_rank)
                if sum(len(p) for p in parts) != len(set().union(*map(set, parts)))
            )
            per_rank = [set().union(*map(set, b)) for b in batches_by_rank]
            shared = set.union(set(), *[a & b for i, a in enumerate(per_rank) for b in per_rank[i + 1:]])
            draws[name] = {"rows_per_rank": [sum(map(len, b)) for b in batches_by_rank],
                           "batches": [len(b) for b in batches_by_rank],
                           "batches_with_rows_on_several_ranks": shared_batches,
                           "rows_on_several_ranks": len(shared)}
        out = {"world_size": self.world_size, "batch_sizes": self.batch_sizes, "draws": draws,
               "weights_sha256_by_rank": [g["weights"] for g in gathered]}
        if any(g["widths"] for g in gathered):
            out["generated_widths_by_rank"] = [g["widths"] for g in gathered]
        return {"data_parallel": out}

    def autocast(self):
        """bf16 mixed precision: fp32 master weights, bf16 matmuls (DeepSpeed does its own on its path)."""
        if self.suite.shared.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    # -- checkpoints and resume ------------------------------------------------------------------------
    def resume(self, state: TrainingState, total: int) -> int:
        """Declares the stage's training state and its ``total`` iterations; loads the newest sound checkpoint of
        this config into it. Returns the iterations already done (0: none, the stage starts from the beginning).
        Every rank calls it once its trained engines are built."""
        self.state, self.total_iterations = state, total
        path = self.checkpoints.newest_sound(config_identity(self.config))
        if path is not None:
            records = self.checkpoints.load(path, state)
            self.done = self.newest_checkpoint = records["iteration"]
            self.drawn, self.generated_widths = records["drawn"], records["generated_widths"]
            self.checkpoint_records, self.resumed_from = records["checkpoints"], records["resumed_from"] + [self.done]
            self._before = {"wall_time_s": records["wall_time_s"], "peak_memory_bytes": records["peak_memory_bytes"]}
            if self.rank == 0:  # the metrics rows up to the checkpoint; later rows of the lost attempt are redone
                self._metrics_file.close()
                shutil.copyfile(path / "metrics.jsonl", self.dir / "metrics.jsonl")
                self._metrics_file = open(self.dir / "metrics.jsonl", "a", buffering=1)
            self.manifest_extra["resumed_from"] = self.resumed_from
            print(f"[resume] {self.stage}: resumed from iteration {self.done} ({path})", file=sys.stderr, flush=True)
        self._last_checkpoint = time.monotonic()
        if self._agree(False, self.stop_signal is not None)[1]:  # it came during the set-up: nothing new to save
            raise StageInterrupted(f"{self.stop_signal or 'a stop signal'} before the first iteration of this attempt")
        return self.done

    def _agree(self, due: bool, stop: bool) -> tuple[bool, bool]:
        """Whether a checkpoint is due and a stop was asked for, on any rank: the ranks act together."""
        if self.world_size == 1:
            return due, stop
        flags = torch.tensor([float(due), float(stop)], device=self.device)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        return bool(flags[0]), bool(flags[1])

    def end_iteration(self, done: int) -> None:
        """After ``done`` iterations: a checkpoint when one is due or a stop signal came (then StageInterrupted)."""
        self.done = done
        if done >= self.total_iterations:
            return  # the stage completes: its result replaces any checkpoint
        runtime = self.full_suite.runtime  # the schedule, outside the stage's identity (see __init__)
        due = bool(runtime.checkpoint_every and done % runtime.checkpoint_every == 0) or bool(
            runtime.checkpoint_interval_s and time.monotonic() - self._last_checkpoint >= runtime.checkpoint_interval_s)
        due, stop = self._agree(due, self.stop_signal is not None)  # any rank's clock or signal decides for all
        if due or stop:
            self.write_checkpoint(done)
        if stop:
            during = f" during iteration {self.stop_during}" if self.stop_signal else " on another rank"
            raise StageInterrupted(f"{self.stop_signal or 'a stop signal'} received{during}; checkpoint at "
                                   f"iteration {done} written")

    def write_checkpoint(self, done: int) -> dict:
        self._metrics_file.flush()
        records = {"drawn": self.drawn, "generated_widths": self.generated_widths, "resumed_from": self.resumed_from,
                   "checkpoints": self.checkpoint_records,
                   "wall_time_s": self._before["wall_time_s"] + time.time() - self.start_time,
                   "peak_memory_bytes": max(self._before["peak_memory_bytes"], self.memory.peak())}
        record = self.checkpoints.write(done, self.state, config_identity(self.config), records,
                                        copies={"metrics.jsonl": self.dir / "metrics.jsonl"})
        self.checkpoint_records = self.checkpoint_records + [
            {k: record[k] for k in ("iteration", "bytes", "seconds")}]
        self._last_checkpoint, self.newest_checkpoint = time.monotonic(), done
        print(f"[checkpoint] {self.stage}: iteration {done} written in {record['seconds']:.2f}s "
              f"({record['bytes'] / 2**20:.1f} MiB): {record['path']}", file=sys.stderr, flush=True)
        return record

    def take_stop_signal(self, signum: int, frame=None) -> None:
        """Handler of SIGTERM and SIGUSR1: noted here, acted on at the end of the current iteration. A stage that
        trains nothing (eval) keeps no checkpoints: it stops at once, and a re-run redoes it."""
        if self.stop_signal is None:
            self.stop_signal, self.stop_during = signal.Signals(signum).name, self.done
        if not self.trains:
            raise StageInterrupted(f"{self.stop_signal} received; this stage keeps no checkpoints")

    def checkpoint_summary(self) -> dict:
        written = self.checkpoint_records
        out: dict = {"resumed_from": self.resumed_from} if self.resumed_from else {}
        if written:
            out["checkpoints"] = {"written": len(written), "bytes": written[-1]["bytes"],
                                  "write_s_mean": sum(w["seconds"] for w in written) / len(written),
                                  "write_s_max": max(w["seconds"] for w in written)}
        return out

    def finish(self, summary: dict) -> None:
        self._metrics_file.close()
        summary = {
            **self.data_parallel_summary(),
            **self.checkpoint_summary(),
            "stage": self.stage,
            "algorithm": self.stage,
            "seed": self.seed,
            "status": "completed",
            # Over the attempts, each up to its last checkpoint: what the result cost, without the work redone.
            "wall_time_s": self._before["wall_time_s"] + time.time() - self.start_time,
            "peak_memory_bytes": max(self._before["peak_memory_bytes"], self.memory.peak()),
            "memory_kind": self.memory.kind,
            **self.memory.details(),
            "model_state_bytes": self.component_bytes,
            "model_state_total_bytes": sum(sum(v.values()) for v in self.component_bytes.values()),
            **summary,
        }
        if self.rank != 0:
            results.discard(self.dir)
            return
        results.write_json(self.dir / "summary.json", summary)
        self.trackers.log_summary(scalars(summary))
        manifest = self.manifest("completed")
        results.write_json(self.dir / "manifest.json", manifest)
        self.trackers.close("completed", manifest)
        results.promote(self.dir, self.final_dir)
        self.checkpoints.discard()  # the result holds the final state

    def interrupted(self, why: str) -> None:
        """An interrupted attempt: its partial directory stays as it is (a re-run rebuilds it from the checkpoint)."""
        if self._metrics_file is not None:
            self._metrics_file.close()
        manifest = self.manifest("interrupted", error=why)
        if self.dir.is_dir():  # an interrupt while the stage opens may come before its directory exists
            results.write_json(self.dir / "manifest.json", manifest)
        self.trackers.close("interrupted", manifest)

    def fail(self, status: str, error: str) -> Path:
        if self._metrics_file is not None:
            self._metrics_file.close()
        # write_json makes the partial folder when the stage stopped before open() made it.
        manifest = self.manifest(status, error=error)
        results.write_json(self.dir / "manifest.json", manifest)
        self.trackers.close(status, manifest)
        failed = results.failed_dir(self.final_dir)
        if self.rank != 0:
            failed = failed.with_name(f"{failed.name}.rank{self.rank}")
        results.discard(failed)
        os.replace(self.dir, failed)
        return failed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run one remax-bench stage.")
    parser.add_argument("--config", required=True, help="resolved stage config (JSON)")
    parser.add_argument("--out", required=True, help="final results directory of this stage and seed")
    # The deepspeed launcher appends --local_rank; accept and ignore it.
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _stop_with_runner() -> None:
    """Fallback to the runner's PR_SET_PDEATHSIG (which a launcher in between, or another OS, may not pass
    on): end this stage within a second of its runner's death."""
    if not os.environ.get("REMAX_BENCH_RUNNER_PID"):
        return  # started by hand: no runner to follow
    import threading

    parent = os.getppid()  # the runner, or the launcher it started; re-parenting means it is gone

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(137)

    threading.Thread(target=watch, daemon=True, name="runner-watchdog").start()


@contextmanager
def _stop_signals_to(run: StageRun):
    """SIGTERM and SIGUSR1 note a stop for the end of the current iteration (see the module's contract)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, run.take_stop_signal) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _leave_together(run: StageRun) -> None:
    if run.world_size > 1 and torch.distributed.is_initialized():
        # Ranks leave together: a rank that exits while another still uses the group can abort in gloo's
        # teardown ("terminate called without an active exception"), which the launcher takes for a failure.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def stage_main(stage: str, train: Callable[[StageRun], dict], argv: list[str] | None = None) -> int:
    """Entry point of ``python -m trainers.<stage>``; its exit codes are the module's contract."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    args = parse_args(argv)
    _stop_with_runner()
    config = json.loads(Path(args.config).read_text())
    run = StageRun(stage, config, Path(args.out))
    with _stop_signals_to(run):
        try:
            run.open()  # inside: an interrupt while the stage opens (its trackers start) is recorded too
            summary = train(run)
        except StageInterrupted as stop:
            run.interrupted(str(stop))
            print(f"[interrupt] stage {stage} stopped: {stop}; run it again to resume", file=sys.stderr, flush=True)
            _leave_together(run)
            return EXIT_RESUMABLE
        except KeyboardInterrupt:
            run.interrupted("interrupted (KeyboardInterrupt / SIGINT)")
            where = (f"resumes from iteration {run.newest_checkpoint}" if run.newest_checkpoint is not None
                     else "starts over (no checkpoint yet)")
            print(f"[interrupt] stage {stage} interrupted at once (SIGINT); a re-run {where}", file=sys.stderr, flush=True)
            return EXIT_SIGINT
        except Exception as err:  # noqa: BLE001 - every failure is recorded, then reported
            failed = run.fail("failed", f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
            # Under the launcher, this rank exits non-zero and the launcher terminates the other ranks (which may
            # wait in a collective for this one), so this line is the stage's reported error.
            where = f" on rank {run.rank} of {run.world_size}" if run.world_size > 1 else ""
            print(f"[error] stage {stage} failed{where}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            print(f"[error] its logs and last good checkpoint are in {failed}", file=sys.stderr)
            return EXIT_FAILED
        run.finish(summary)
    _leave_together(run)
    return EXIT_COMPLETED
