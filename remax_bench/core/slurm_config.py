"""The suite's ``runtime.slurm`` block: where and how long each stage runs when ``runtime.executor: slurm``.

Every stage becomes one Slurm job (remax_bench/slurm.py). Its shape is the suite's: ``runtime.num_nodes``
nodes and ``runtime.num_gpus`` ranks on each (the data-parallel size every global batch splits over), so the
shape is stated once; this block holds only what Slurm needs besides it. None of it changes what a stage
computes, so none of it is part of a stage's identity (config.WATCH_FIELDS).
"""

from __future__ import annotations

import re
from typing import Optional, Union

from pydantic import Field, field_validator, model_validator

from remax_bench.core.schema import Strict

# sbatch --time: minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes,
# days-hours:minutes:seconds.
_TIME = re.compile(r"^(?:(?P<days>\d+)-)?(?P<parts>\d+(?::\d+){0,2})$")


def time_limit_seconds(limit: Union[int, str]) -> int:
    """Slurm's time limit in seconds (an int is minutes, as sbatch reads a bare number)."""
    if isinstance(limit, int):
        return limit * 60
    match = _TIME.match(limit.strip())
    if not match:
        raise ValueError(f"time_limit: expected minutes or Slurm's [days-]hours:minutes:seconds, got {limit!r}")
    parts = [int(p) for p in match["parts"].split(":")]
    if match["days"] is not None:  # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
        return ((int(match["days"]) * 24 + hours) * 60 + minutes) * 60 + seconds
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return (parts[0] * 60 + parts[1]) * 60 + parts[2]


class Slurm(Strict):
    partition: Optional[str] = Field(default=None, description="sbatch --partition; default: the cluster's default")
    account: Optional[str] = None
    qos: Optional[str] = None
    time_limit: Union[int, str] = Field(default="1-00:00:00", description="per job: minutes or [days-]hh:mm:ss")
    # Requested per node. GPUs default to runtime.num_gpus on a GPU run (one rank per GPU) and to none on a CPU
    # run; CPUs are split evenly over the node's ranks (--cpus-per-task).
    gpus_per_node: Optional[int] = Field(default=None, ge=0)
    cpus_per_node: Optional[int] = Field(default=None, gt=0)
    mem: Optional[str] = Field(default=None, description="sbatch --mem per node, e.g. 200G")
    sbatch: list[str] = Field(default=[], description="extra sbatch options, e.g. ['--constraint=h100', '--exclusive']")
    setup: list[str] = Field(default=[], description="shell lines run in the job before the stage (module load ...)")
    # Slurm sends SIGUSR1 this long before the time limit (--signal=USR1@N): the stage writes a checkpoint at the end
    # of its iteration and exits resumable, and the job requeues itself; it must cover one iteration and one
    # checkpoint. Slurm's own resolution is 60 s.
    signal_lead_s: int = Field(default=600, ge=60)
    poll_s: float = Field(default=10.0, gt=0, description="how often run and status ask Slurm about the jobs")

    @field_validator("time_limit")
    @classmethod
    def _time(cls, value: Union[int, str]) -> Union[int, str]:
        if time_limit_seconds(value) <= 0:
            raise ValueError(f"time_limit: expected a positive duration, got {value!r}")
        return value

    @field_validator("sbatch")
    @classmethod
    def _options(cls, lines: list[str]) -> list[str]:
        for line in lines:
            if not re.match(r"^--[a-z][a-z0-9-]*(=.+)?$", line.strip()):
                raise ValueError(f"sbatch: expected options like '--constraint=h100' or '--exclusive', got {line!r}")
        return lines

    @model_validator(mode="after")
    def _lead(self) -> "Slurm":
        limit = time_limit_seconds(self.time_limit)
        if self.signal_lead_s >= limit:
            raise ValueError(f"signal_lead_s: the warning before the time limit must be shorter than it "
                             f"(got {self.signal_lead_s} s, time_limit {self.time_limit!r} = {limit} s)")
        return self

    def sbatch_options(self) -> dict[str, Union[str, bool]]:
        """The extra lines as submitit's additional parameters: '--key=value' -> {key: value}, '--flag' -> True."""
        out: dict[str, Union[str, bool]] = {}
        for line in self.sbatch:
            key, _, value = line.strip().removeprefix("--").partition("=")
            out[key.replace("-", "_")] = value if value else True
        return out
