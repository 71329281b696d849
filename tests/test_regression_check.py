"""remax-bench check catches a broken ReMax on the gold-reward rule.

Trains the tiny suite's SFT model and reward model for real, then ReMax from them: as written (passes), with
its advantage inverted (b(x) - r(x, a): fails), and with the greedy baseline left out altogether. The last
one is recorded, not asserted: on this task plain REINFORCE also improves the gold reward within 50
iterations (0.853 vs 0.856 in one run), so the baseline's job -- less variance -- is not what the gold rule
measures. Minutes on 2 cores, so marked slow (``make test-slow``).
"""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from remax_bench import check
from remax_bench.core.stage import stage_main
from remax_bench.core.suite_file import load_suite
from trainers import online, remax


@pytest.mark.slow
def test_check_fails_the_gold_rule_when_remax_forgets_its_baseline(tmp_path, monkeypatch):
    results = tmp_path / "results"
    prep = subprocess.run([sys.executable, "-m", "remax_bench.cli", "run", "tiny", "--only", "sft,reward_model",
                           "--results-dir", str(results)], capture_output=True, text=True, timeout=900)
    assert prep.returncode == 0, prep.stdout[-2000:]
    root = results / "tiny"
    suite = load_suite("tiny")
    config = {"stage": "remax", "seed": 0, "suite": suite.resolved(),
              "inputs": {"sft": str(root / "sft/seed0/checkpoint"),
                         "reward_model": str(root / "reward_model/seed0/checkpoint")}}
    path = tmp_path / "remax.json"
    path.write_text(json.dumps(config))

    def verdict(suite_dir: Path) -> bool:
        rows = check.rules(suite_dir, check.collect_metrics(suite_dir))
        return {r.name: r.passed for r in rows}["rule: remax beats SFT on gold reward"]

    assert stage_main("remax", online.train, ["--config", str(path), "--out", str(root / "remax/seed0")]) == 0
    assert verdict(root), "the unbroken ReMax must pass the gold rule"

    real_advantages = remax.advantages

    def inverted(exp, cfg, stats):
        return real_advantages(replace(exp, scores=exp.greedy_scores, greedy_scores=exp.scores), cfg, stats)

    def no_baseline(exp, cfg, stats):
        return real_advantages(replace(exp, greedy_scores=torch.zeros_like(exp.greedy_scores)), cfg, stats)

    outcomes = {}
    for name, broken_returns in (("inverted", inverted), ("no_baseline", no_baseline)):
        monkeypatch.setattr(remax, "advantages", broken_returns)
        broken = tmp_path / name / "tiny"
        (broken / "sft").mkdir(parents=True)
        (broken / "sft" / "seed0").symlink_to(root / "sft" / "seed0")
        assert stage_main("remax", online.train, ["--config", str(path), "--out", str(broken / "remax/seed0")]) == 0
        outcomes[name] = verdict(broken)
    print("gold rule passed:", outcomes)
    assert not outcomes["inverted"], "a ReMax that climbs the wrong way must fail the gold rule"
