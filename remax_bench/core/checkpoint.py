"""Mid-stage checkpoints: the whole training state of a stage, written atomically and read back exactly.

A stage says what its training state is (``TrainingState``): its trained engines, each saving and loading its own
model, optimizer and scheduler states (under DeepSpeed through its own ``save_checkpoint``, every rank writing its
ZeRO part), and its own parts (data position, running statistics, summary accumulators), each an object with
``state_dict`` / ``load_state_dict``. This module adds every rank's RNG states (python, numpy, torch, CUDA). Restored,
they make the resumed run's iterations those of an uninterrupted run, bit for bit on the CPU.

Layout, beside the stage's result (results/<suite>/<stage>/):

    .seed<k>.checkpoints/
      iteration-00000012/         a complete checkpoint: 12 iterations done
        checkpoint.json           written last: iteration, config identity, ranks, every file's bytes and sha256
        engines/<name>/...        each trained engine's own files
        rank0.pt rank1.pt ...     each rank's RNG states, the stage's parts and the run's records
        metrics.jsonl             the stage's metrics rows up to here
      .iteration-00000018.tmp/    being written: never read, removed when found

Writing: every rank writes into the temp directory; each fsyncs and hashes its share of the files; rank 0 writes
checkpoint.json (fsynced), renames the directory into place and fsyncs the folder, then keeps the newest ``keep``.
A crash at any moment leaves complete checkpoints and at most one temp directory. Several nodes need the results
folder on a shared file system (as the launcher already does).

Reading: the newest complete checkpoint is verified (every file's size and sha256, split over the ranks); a
corrupt one is set aside as ``<name>.corrupt`` with a warning naming it, and the one before is tried. Checkpoints
written under another config are never resumed from: the stage starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from remax_bench.core import results
from remax_bench.core.identity import stage_identity

MANIFEST = "checkpoint.json"
_COMPLETE = re.compile(r"^iteration-(\d{8})$")
class Engine(Protocol):
    """A trained model's engine: model, optimizer and scheduler states in and out of a directory."""

    def save_state(self, directory: Path) -> None: ...

    def load_state(self, directory: Path) -> None: ...


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainingState:
    """What a stage must get back to go on exactly: its trained engines and its own parts."""

    engines: dict[str, Engine]
    parts: dict[str, Stateful] = field(default_factory=dict)


class Accumulators:
    """A dataclass of running totals (summary figures) that saves and restores its own fields."""

    def state_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)


def config_identity(config: dict) -> str:
    """The stage config a checkpoint belongs to: the stage's identity (remax_bench.core.identity), which reads
    neither the --set overrides that spelled the config nor the runtime fields that only schedule checkpoints
    (runtime.checkpoint_every, checkpoint_interval_s, keep_checkpoints) or watch the run."""
    return stage_identity(config)


# -- RNG states ---------------------------------------------------------------------------------------
def rng_states() -> dict:
    """This process's random number generators, in types torch.load(weights_only=True) reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()  # every device this rank sees
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


# -- ranks --------------------------------------------------------------------------------------------
@dataclass
class Ranks:
    """This process's place among the stage's data-parallel ranks; collectives over them when there are several."""

    rank: int = 0
    world: int = 1

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def gather(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


# -- files --------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _seal(path: Path) -> dict:
    """Flush a file to disk and note its size and sha256."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def iteration_of(path: Path) -> int:
    return int(_COMPLETE.match(path.name).group(1))


def complete(root: Path) -> list[Path]:
    """The complete checkpoints under ``root`` (renamed into place, manifest present), newest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _COMPLETE.match(p.name) and (p / MANIFEST).is_file()]
    return sorted(found, key=iteration_of, reverse=True)


def newest_of_config(root: Path, identity: str) -> int | None:
    """The iteration the newest complete checkpoint of this config holds, from its manifest alone (the files are
    verified when a stage loads it); None when there is none."""
    for path in complete(root):
        try:
            manifest = results.read_json(path / MANIFEST)
        except (OSError, json.JSONDecodeError):
            continue
        return manifest["iteration"] if manifest.get("identity") == identity else None
    return None


# -- the store ----------------------------------------------------------------------------------------
class CheckpointStore:
    """The checkpoints of one stage and seed."""

    def __init__(self, root: Path, ranks: Ranks, keep: int, warn: Callable[[str], None] = print):
        self.root, self.ranks, self.keep, self.warn = Path(root), ranks, keep, warn

    def write(self, iteration: int, state: TrainingState, identity: str, records: dict,
              copies: dict[str, Path] | None = None) -> dict:
        """Checkpoint after ``iteration`` iterations; every rank calls it. Returns its path, bytes and seconds."""
        start = time.perf_counter()
        ranks = self.ranks
        final = self.root / f"iteration-{iteration:08d}"
        tmp = self.root / f".{final.name}.tmp"
        if ranks.rank == 0:
            results.discard(tmp)
            tmp.mkdir(parents=True)
        ranks.barrier()
        for name, engine in state.engines.items():
            engine.save_state(tmp / "engines" / name)  # collective under DeepSpeed: each rank writes its part
        own = {"iteration": iteration, "rng": rng_states(), "records": records,
               "parts": {name: part.state_dict() for name, part in state.parts.items()}}
        torch.save(own, tmp / f"rank{ranks.rank}.pt")
        if ranks.rank == 0:
            for name, source in (copies or {}).items():
                shutil.copyfile(source, tmp / name)
        ranks.barrier()
        names = _files(tmp)
        sealed: dict = {}
        for part in ranks.gather({name: _seal(tmp / name) for name in names[ranks.rank::ranks.world]}):
            sealed.update(part)
        if ranks.rank == 0:
            manifest = {"iteration": iteration, "identity": identity, "world_size": ranks.world,
                        "engines": sorted(state.engines), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "seconds": time.perf_counter() - start, "files": sealed}
            with open(tmp / MANIFEST, "w") as f:
                json.dump(manifest, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            results.discard(final)  # a corrupt one of the same iteration, set aside or not
            os.replace(tmp, final)
            _fsync_dir(self.root)
            for old in complete(self.root)[self.keep:]:
                results.discard(old)
        ranks.barrier()
        return {"path": str(final), "iteration": iteration, "bytes": sum(f["bytes"] for f in sealed.values()),
                "seconds": time.perf_counter() - start}

    def verify(self, path: Path) -> list[str]:
        """What is wrong with a checkpoint (empty: every file has its recorded size and sha256); all ranks call it."""
        try:
            manifest = results.read_json(path / MANIFEST)
            recorded = manifest["files"]
        except (OSError, json.JSONDecodeError, KeyError) as err:
            return [f"{MANIFEST} unreadable ({type(err).__name__})"]
        names = sorted(recorded)
        mine = []
        for name in names[self.ranks.rank::self.ranks.world]:
            file = path / name
            if not file.is_file():
                mine.append(f"{name} missing")
            elif file.stat().st_size != recorded[name]["bytes"]:
                mine.append(f"{name} has {file.stat().st_size} bytes, {recorded[name]['bytes']} written")
            elif _sha256(file) != recorded[name]["sha256"]:
                mine.append(f"{name} does not match its sha256")
        return [problem for part in self.ranks.gather(mine) for problem in part]

    def newest_sound(self, identity: str) -> Path | None:
        """The newest complete, verified checkpoint of this config. Corrupt ones are set aside with a warning;
        when the newest is of another config every checkpoint is discarded (the stage starts over)."""
        ranks = self.ranks
        candidates = ranks.gather([str(p) for p in complete(self.root)])[0]  # rank 0's listing, on every rank
        if ranks.rank == 0 and self.root.is_dir():
            for stale in self.root.glob(".iteration-*.tmp"):
                results.discard(stale)  # a write that never finished
        for index, name in enumerate(candidates):
            path = Path(name)
            try:
                identity_found = results.read_json(path / MANIFEST).get("identity")
            except (OSError, json.JSONDecodeError):
                identity_found = None
            if identity_found is not None and identity_found != identity:
                if index == 0:
                    self.warn(f"the checkpoints in {self.root} were written under another config; starting over")
                    ranks.barrier()
                    if ranks.rank == 0:
                        results.discard(self.root)
                    ranks.barrier()
                    return None
                continue
            problems = self.verify(path)
            if not problems:
                return path
            self.warn(f"checkpoint {path} is corrupt ({'; '.join(problems[:3])}); set aside as "
                      f"{path.name}.corrupt, trying the one before")
            ranks.barrier()
            if ranks.rank == 0:
                results.discard(path.with_name(f"{path.name}.corrupt"))
                os.replace(path, path.with_name(f"{path.name}.corrupt"))
            ranks.barrier()
        return None

    def load(self, path: Path, state: TrainingState) -> dict:
        """Loads a verified checkpoint into ``state`` and this rank's RNG; returns this rank's records."""
        for name, engine in state.engines.items():
            engine.load_state(path / "engines" / name)
        own = torch.load(path / f"rank{self.ranks.rank}.pt", map_location="cpu", weights_only=True)
        for name, part in state.parts.items():
            part.load_state_dict(own["parts"][name])
        set_rng_states(own["rng"])  # last: nothing after it may draw a random number before the next iteration
        records = dict(own["records"])
        manifest = results.read_json(path / MANIFEST)  # this checkpoint's own write, which its records precede
        records["checkpoints"] = records.get("checkpoints", []) + [
            {"iteration": own["iteration"], "bytes": sum(f["bytes"] for f in manifest["files"].values()),
             "seconds": manifest["seconds"]}]
        return {"iteration": own["iteration"], **records}

    def discard(self) -> None:
        if self.ranks.rank == 0:
            results.discard(self.root)
