"""`remax-bench status SUITE`: where each planned stage stands, from the results layout and, for a run on Slurm,
from the cluster (its job id, Slurm's state and reason)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from remax_bench.core import results


@dataclass
class StageState:
    key: str
    state: str  # complete | given | running | queued | failed | partial | missing | stale
    job: str = ""
    slurm: str = ""
    detail: str = ""


def stage_states(runner, stages) -> list[StageState]:
    from remax_bench.slurm import ENDED, JobRecords, ended_state, job_states

    plans = {s.key: s for s in stages}
    records = JobRecords(runner.root / "slurm" / "jobs.json")
    recorded = {s.key: records.get(s.key) for s in stages if records.get(s.key)}
    live = job_states([r["job_id"] for r in recorded.values()]) if recorded and shutil.which("squeue") else {}
    out = []
    for item in stages:
        if item.given:
            out.append(StageState(item.key, "given", detail=item.given))
            continue
        reason = runner.why_run(item, runner.stage_config(item, plans))
        state = "complete" if reason is None else reason.split(":")[0].split(" ")[0]
        state = {"input": "stale", "config": "stale", "interrupted": "partial"}.get(state, state)
        row = StageState(item.key, state, detail="" if reason is None else reason)
        record = recorded.get(item.key)
        if record:
            row.job = record["job_id"]
            job = live.get(row.job)
            if job is not None and job.state in ENDED:
                job = ended_state(row.job, job)
            if job is not None:
                row.slurm = job.describe(row.job).removeprefix(f"Slurm job {row.job} ")
                if job.state not in ENDED and state != "complete":
                    row.state = "running" if job.state in ("RUNNING", "COMPLETING", "CONFIGURING") else "queued"
            elif record.get("state"):
                row.slurm = f"(no longer in Slurm; ended {record['state']})"
        failed = results.failed_dir(runner.final_dir(item.key)) / "manifest.json"
        if state == "failed" and failed.is_file():  # the stage's own error, first line
            row.detail = (results.read_json(failed).get("error") or row.detail).splitlines()[0][:200]
        out.append(row)
    return out


def status_table(rows: list[StageState]) -> str:
    width = max([len(r.key) for r in rows] + [5])
    lines = [f"{'stage':<{width}}  {'state':<9}  {'job':>8}  {'slurm':<28}  detail", "-" * (width + 60)]
    for r in rows:
        lines.append(f"{r.key:<{width}}  {r.state:<9}  {r.job or '-':>8}  {r.slurm or '-':<28}  {r.detail}")
    return "\n".join(lines)
