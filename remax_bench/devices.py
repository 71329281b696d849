"""This machine's devices, shared between the stages that run at once and between separate runs.

``remax-bench run --jobs N`` runs up to N stages at once. Each takes a share when it starts and gives it back
when it ends:

- GPUs: as many as the stage has ranks (``runtime.num_gpus``; one for eval), through the deepspeed launcher's
  ``--include localhost:i,j`` or ``CUDA_VISIBLE_DEVICES`` for a one-process stage.
- CPU cores: with N > 1 the cores this process may use are cut into N equal slots; a stage is pinned to its
  slot (sched_setaffinity) and its OpenMP/MKL/torch threads are the slot's cores over its ranks, so stages
  that run side by side do not fight over cores. With N = 1 a stage has the whole machine, as before.
- A master port for its process group, free and held for the stage's lifetime.

GPUs and ports are held with an fcntl lock per device in one folder of this machine (``$REMAX_BENCH_LOCK_DIR``,
default ``<tmp>/remax-bench-locks``), so two separate ``remax-bench run`` processes never share a GPU or a port:
the second waits for the first to give the GPU back. The kernel drops a lock when the last process holding it
ends (the runner hands the lock's descriptor to the stage too), so a crash never leaves a device locked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

LOCK_DIR_ENV = "REMAX_BENCH_LOCK_DIR"
PORTS_TRIED = 2000  # from runtime.master_port upward


def lock_dir() -> Path:
    folder = Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "remax-bench-locks")
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            folder.chmod(0o1777)  # every user's runs on this machine lock the same devices (sticky, like /tmp)
        except PermissionError:
            pass
    return folder


class Lock:
    """One device held by this process: an exclusive fcntl lock on ``<lock dir>/<name>.lock``."""

    def __init__(self, name: str, fd: int):
        self.name, self.fd = name, fd

    @classmethod
    def take(cls, name: str) -> Lock | None:
        """The lock, or None when another process holds it."""
        path = lock_dir() / f"{name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for the waiting run's message
        return cls(name, fd)

    @staticmethod
    def holder(name: str) -> str:
        try:
            pid = (lock_dir() / f"{name}.lock").read_text().strip()
        except OSError:
            return "another process"
        return f"pid {pid}" if pid else "another process"

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last descriptor drops the lock
            self.fd = -1


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def take_port(first: int) -> tuple[int, Lock]:
    """A master port nothing listens on and no other stage of any run holds, locked; the first from ``first``."""
    for port in range(first, min(first + PORTS_TRIED, 65536)):
        lock = Lock.take(f"port-{port}")
        if lock is None:
            continue
        if port_is_free(port):
            return port, lock
        lock.release()
    raise RuntimeError(f"no free master port in {first}-{first + PORTS_TRIED - 1} (runtime.master_port)")


def visible_gpus() -> list[int]:
    """The GPUs this process may use, by their machine-wide index: CUDA_VISIBLE_DEVICES's entries, else all."""
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        import torch

        return list(range(torch.cuda.device_count()))
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if not all(e.isdigit() for e in entries):
        raise ValueError(f"CUDA_VISIBLE_DEVICES={text!r}: name GPUs by index for `run` to share them out "
                         "(it locks and hands out each one by its index)")
    return [int(e) for e in entries]


@dataclass
class Share:
    """What one running stage holds: its GPUs, its CPU cores (None: the whole machine), its master port."""

    gpus: list[int]
    cores: list[int] | None
    port: int
    locks: list[Lock] = field(default_factory=list)
    slot: int = 0

    def env(self, ranks: int, one_process: bool) -> dict[str, str]:
        """The stage's environment: its GPUs for a one-process stage (the launcher is given --include), its
        threads per rank, its master port."""
        env = {"MASTER_PORT": str(self.port)}
        if self.gpus and one_process:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, self.gpus))
        if self.cores is not None:
            threads = str(max(1, len(self.cores) // max(1, ranks)))
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        return env

    @property
    def fds(self) -> tuple[int, ...]:
        return tuple(lock.fd for lock in self.locks)

    def release(self) -> None:
        for lock in self.locks:
            lock.release()


class DevicePool:
    """The devices of this machine that one run hands out to its stages, up to ``jobs`` stages at once."""

    def __init__(self, gpus: list[int], cores: list[int], jobs: int, first_port: int):
        self.gpus, self.jobs, self.first_port = list(gpus), jobs, first_port
        # N > 1: N slots of len(cores) // N cores each (wrapping round when N exceeds the cores); N = 1: no pinning.
        per = max(1, len(cores) // jobs)
        self.slots: list[list[int] | None] = (
            [None] if jobs == 1 else [[cores[(i * per + j) % len(cores)] for j in range(per)] for i in range(jobs)])
        self.free_slots = list(range(len(self.slots)))
        self.used_gpus: set[int] = set()

    @classmethod
    def for_suite(cls, runtime, jobs: int) -> DevicePool:
        return cls(visible_gpus() if uses_cuda(runtime) else [], sorted(os.sched_getaffinity(0)), jobs,
                   runtime.master_port)

    def take(self, gpus_needed: int) -> Share | str:
        """A share for one stage, or why it has to wait (its GPUs are busy: this run's or another's)."""
        if not self.free_slots:
            return "all slots in use"
        locks, taken, busy = [], [], []
        for gpu in self.gpus:
            if len(taken) == gpus_needed:
                break
            if gpu in self.used_gpus:
                busy.append(f"GPU {gpu} (a stage of this run)")
                continue
            lock = Lock.take(f"gpu-{gpu}")
            if lock is None:
                busy.append(f"GPU {gpu} ({Lock.holder(f'gpu-{gpu}')})")
                continue
            locks.append(lock)
            taken.append(gpu)
        if len(taken) < gpus_needed:
            for lock in locks:
                lock.release()
            return f"waiting for {gpus_needed} GPU(s); busy: {', '.join(busy)}"
        port, port_lock = take_port(self.first_port)
        slot = self.free_slots.pop(0)
        self.used_gpus.update(taken)
        return Share(taken, self.slots[slot], port, [*locks, port_lock], slot)

    def give_back(self, share: Share) -> None:
        share.release()
        self.used_gpus.difference_update(share.gpus)
        self.free_slots.append(share.slot)
        self.free_slots.sort()


def uses_cuda(runtime) -> bool:
    if runtime.device == "cuda":
        return True
    if runtime.device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def gpus_per_stage(stage: str, runtime) -> int:
    """GPUs one stage occupies on this machine: one per rank for training (eval runs as one process)."""
    if not uses_cuda(runtime):
        return 0
    return 1 if stage == "eval" else ranks_per_node(stage, runtime)


def ranks_per_node(stage: str, runtime) -> int:
    """Processes a stage starts on each node: one per GPU (or CPU rank) under DeepSpeed; eval is one process."""
    if stage == "eval" or not runtime.deepspeed.enabled:
        return 1
    return max(1, runtime.num_gpus)


def problems(runtime, stages: list[str], jobs: int) -> list[str]:
    """What stops `run --jobs N` here before any stage starts, one line each."""
    found = []
    if jobs > 1 and runtime.num_nodes > 1 and runtime.executor == "local":
        found.append(f"--jobs {jobs}: stages on several nodes (runtime.num_nodes={runtime.num_nodes}) go through the "
                     "deepspeed launcher's hostfile, one at a time; use --jobs 1 or runtime.executor: slurm")
    if runtime.executor != "local" or not uses_cuda(runtime):
        return found
    try:
        gpus = visible_gpus()
    except ValueError as err:
        return found + [str(err)]
    need = max([gpus_per_stage(s, runtime) for s in stages] or [0])
    if gpus and need > len(gpus):  # none at all: preflight says there is no CUDA device
        found.append(f"runtime.num_gpus: a stage needs {need} GPUs and this machine shows {len(gpus)}")
    return found
