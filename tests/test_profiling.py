"""REMAX_BENCH_PROFILE: each operator's self time charged to the phase it ran in, ours and TRL's marks alike."""

import json

import torch

from remax_bench.core import profiling
from remax_bench.core.metrics import PhaseTimer


def _work(timer: PhaseTimer):
    a = torch.randn(64, 64)
    with timer.phase("generate"):
        torch.mm(a, a)
    with torch.profiler.record_function("train"):  # TRL's step: its rollout (generation inside) and its update
        with torch.profiler.record_function("rollout"):
            with timer.phase("generate"):
                torch.relu(a)
            torch.tanh(a)
        torch.sigmoid(a)
    with timer.phase("score"):
        torch.cos(a)
    torch.exp(a)


def test_operators_are_charged_to_the_innermost_phase():
    timer = PhaseTimer()
    with torch.profiler.profile() as prof:
        _work(timer)
    breakdown = profiling.phase_breakdown(prof.events())
    where = {op: phase for phase, ops in breakdown.items() for op in ops}
    assert where["aten::mm"] == "generate" and where["aten::relu"] == "generate"
    assert where["aten::tanh"] == "score"  # a rollout's work that is not generation is scoring
    assert where["aten::cos"] == "score"
    assert where["aten::sigmoid"] == "train"
    assert where["aten::exp"] == profiling.OTHER
    assert not {"generate", "train", "rollout", "score"} & set(where)  # the marks are not operators
    assert timer.pop()["generate"] > 0


def test_a_profiled_block_writes_its_breakdown(tmp_path, monkeypatch):
    with profiling.profiled(tmp_path / "off", torch.device("cpu")):
        _work(PhaseTimer())
    assert not (tmp_path / "off").exists()
    monkeypatch.setenv(profiling.PROFILE_ENV, "1")
    with profiling.profiled(tmp_path / "on", torch.device("cpu")):
        _work(PhaseTimer())
    report = json.loads((tmp_path / "on" / "profile.json").read_text())
    assert "aten::mm" in report["cpu"]["generate"]
    assert "generate:" in (tmp_path / "on" / "profile.txt").read_text()
    assert report["gflop"]["generate"] == 2 * 64**3 / 1e9  # the one 64 x 64 matrix product generate made
