"""Where a stage's time goes, op by op and phase by phase: ``REMAX_BENCH_PROFILE=1`` (or ``bench --profile``).

A stage then runs under torch's profiler, and every operator's self time is charged to the innermost phase that
encloses it (``PhaseTimer.phase`` marks generate, score, train and sync with ``record_function``; TRL's trainers
get the same marks in remax_bench/peers/trl_stage.py), so the two sides of a comparison break down alike:

    profile.json   {phase: {operator: self milliseconds}} (CPU time; CUDA time too on a GPU), and the GFLOP of each
                   phase's matrix products: the work, which a loaded machine does not change
    profile.txt    the heaviest operators of each phase

The profiler slows small operators more than large ones: compare shares between runs taken the same way, never a
profiled time with an unprofiled one.
"""

from __future__ import annotations

import bisect
import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch

PROFILE_ENV = "REMAX_BENCH_PROFILE"
PHASES = ("generate", "sync", "score", "train")
# Marks that nest phases: a rollout (TRL's generate-and-score) is scoring except for the generation inside it.
SCORING_MARKS = ("rollout", "reference")
OTHER = "outside the iterations"  # loading, the first-step setup, held-out evaluation


def requested() -> bool:
    return os.environ.get(PROFILE_ENV, "") not in ("", "0")


def _mark_phase(name: str) -> str | None:
    if name in PHASES:
        return name
    return "score" if name in SCORING_MARKS else None


def _timeline(marks: list[tuple[float, float, str]]) -> tuple[list[float], list[str]]:
    """The phase marks cut into elementary segments, each labelled by the innermost mark covering it (marks nest:
    the innermost is the latest to start). Attribution by time, not by parent event, so that work on other threads
    (CUDA's autograd thread) lands in the phase it ran in."""
    points = sorted({t for start, end, _ in marks for t in (start, end)})
    labels = []
    for a, b in zip(points, points[1:]):
        middle = (a + b) / 2
        covering = [m for m in marks if m[0] <= middle < m[1]]
        labels.append(max(covering, key=lambda m: m[0])[2] if covering else OTHER)
    return points, labels


def _phases(events):
    """(event, phase) of every operator event."""
    marks = [(e.time_range.start, e.time_range.end, _mark_phase(e.name)) for e in events if _mark_phase(e.name)]
    points, labels = _timeline(marks)
    for event in events:
        if _mark_phase(event.name):
            continue
        i = bisect.bisect_right(points, event.time_range.start) - 1
        yield event, labels[i] if 0 <= i < len(labels) else OTHER


def phase_breakdown(events, device_time: bool = False) -> dict[str, dict[str, float]]:
    """{phase: {operator: self ms}} from a profiler's events; the phase marks themselves are not operators."""
    out: dict[str, dict[str, float]] = {}
    for event, phase in _phases(events):
        micros = event.self_device_time_total if device_time else event.self_cpu_time_total
        if micros <= 0:
            continue
        ops = out.setdefault(phase, {})
        ops[event.name] = ops.get(event.name, 0.0) + micros / 1000.0
    return {phase: dict(sorted(ops.items(), key=lambda kv: -kv[1])) for phase, ops in out.items()}


def phase_gflop(events) -> dict[str, float]:
    """{phase: GFLOP of its matrix products} as the profiler counts them (mm, addmm, bmm, ...): the work done,
    which no load on the machine changes, where times do."""
    out: dict[str, float] = {}
    for event, phase in _phases(events):
        if event.flops:
            out[phase] = out.get(phase, 0.0) + event.flops / 1e9
    return out


def format_breakdown(breakdown: dict[str, dict[str, float]], top: int = 12) -> str:
    lines = []
    for phase in [*PHASES, OTHER]:
        ops = breakdown.get(phase)
        if not ops:
            continue
        total = sum(ops.values())
        lines.append(f"{phase}: {total:.1f} ms of operator self time")
        lines += [f"  {ms:10.1f} ms  {ms / total:6.1%}  {name}" for name, ms in list(ops.items())[:top]]
    return "\n".join(lines)


@contextmanager
def profiled(out_dir: Path, device: torch.device):
    """Runs the block under torch's profiler when REMAX_BENCH_PROFILE is set, then writes the breakdown."""
    if not requested():
        yield
        return
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, with_flops=True) as prof:
        yield
    events = prof.events()
    report = {"cpu": phase_breakdown(events), "gflop": phase_gflop(events)}
    if device.type == "cuda":
        report["cuda"] = phase_breakdown(events, device_time=True)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "profile.json").write_text(json.dumps(report, indent=1))
    text = "\n\n".join(f"[{kind}]\n{format_breakdown(report[kind])}" for kind in ("cpu", "cuda") if kind in report)
    text += "\n\n[GFLOP of matrix products]\n" + "\n".join(f"{p}: {g:.2f}" for p, g in report["gflop"].items())
    (Path(out_dir) / "profile.txt").write_text(text + "\n")
