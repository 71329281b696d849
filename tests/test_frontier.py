"""The reward-KL frontier, gold reward at equal KL, and the headline's intervals and probabilities of improvement,
on a synthetic results folder of a KL sweep whose numbers are known by construction.

Every run's KL grows linearly with the iteration, kl(t) = r (t + 1) with r = base rate x 0.1 / beta, and every
held-out evaluation scores on the algorithm's line gold = 0.5 + s * KL (its KL: the mean over the iterations
within half an evaluation interval, as the report pairs them). So each seed's frontier is that line, and at any KL
both algorithms reach, gold at equal KL is 0.5 + s kappa, by hand.
"""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from remax_bench import report
from remax_bench.core import sweep
from remax_bench.core.suite_file import load_suite_text
from remax_bench.report.frontier import frontier_at, upper_envelope

BETAS = (0.1, 0.2)
RATE = {"ppo": 0.02, "remax": 0.01}  # KL per iteration at beta = 0.1
SLOPE = {"ppo": 1.0, "remax": 2.0}  # gold per nat, seed k adds 0.01 k
ITERATIONS, EVERY, SEEDS = 20, 5, 5


def _suite():
    with open("tests/fixtures/nano.yaml") as f:
        data = yaml.safe_load(f)
    data["shared"].update(kl_coef=list(BETAS), iterations=ITERATIONS, heldout_eval_every=EVERY)
    return load_suite_text(yaml.safe_dump(data))


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _run(root, dirname, stage, seed, suite, summary, metrics=()):
    d = root / dirname / f"seed{seed}"
    _write(d / "manifest.json", {"stage": stage, "seed": seed, "status": "completed", "suite_hash": suite.config_hash(),
                                 "config": {"stage": stage, "seed": seed, "suite": suite.resolved()}})
    _write(d / "summary.json", summary)
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def _window_kl(rate, step):
    near = [t for t in range(ITERATIONS) if abs(t - step) <= EVERY // 2]
    return rate * float(np.mean([t + 1 for t in near]))


def build_sweep(results):
    root = results / "nano"
    variants = sweep.variants(_suite())
    _run(root, "sft", "sft", 0, variants[0].suite, {"heldout_gold_reward": 0.5})
    for variant, beta in zip(variants, BETAS):
        for algo in RATE:
            rate = RATE[algo] * 0.1 / beta
            for seed in range(SEEDS):
                slope = SLOPE[algo] + 0.01 * seed
                rows = []
                for t in range(ITERATIONS):
                    row = {"step": t, "kl": rate * (t + 1), "reward_mean": 0.1 * t, "wall_time_s": t + 1.0}
                    if (t + 1) % EVERY == 0:
                        row["heldout_gold_reward"] = 0.5 + slope * _window_kl(rate, t)
                    rows.append(row)
                final = rows[-1]["heldout_gold_reward"]
                summary = {"heldout_gold_reward": final, "heldout_gold_reward_before": 0.5,
                           "final_kl": rate * np.mean([19, 20]), "iterations": ITERATIONS,
                           "kl_treatment": {"estimator": "k1", "placement": "reward", "shape": "return_to_go"}}
                _run(root, f"{algo}@{variant.label}", algo, seed, variant.suite, summary, rows)
    return root


def test_upper_envelope_and_reading_it_at_a_kl():
    kl = np.array([0.0, 0.1, 0.2, 0.3, 0.15])
    gold = np.array([0.5, 0.7, 0.6, 0.9, 0.8])
    corners = upper_envelope(kl, gold)
    assert corners[0].tolist() == [0.0, 0.1, 0.15, 0.3] and corners[1].tolist() == [0.5, 0.7, 0.8, 0.9]
    assert frontier_at(kl, gold, 0.05) == pytest.approx(0.6)  # halfway from (0, 0.5) to (0.1, 0.7)
    assert frontier_at(kl, gold, 0.2) == pytest.approx(0.8 + (0.2 - 0.15) / 0.15 * 0.1)
    assert np.isnan(frontier_at(kl, gold, 0.31))  # beyond what the run reached


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    base = tmp_path_factory.mktemp("sweep")
    root = build_sweep(base / "results")
    return root, report.write_report(base / "results", base / "reports", "nano", dpi=40)


def test_frontier_pools_the_sweep_and_reads_every_seed_at_equal_kl(swept):
    root, _ = swept
    views = report.load_sweep(root.parent, "nano")
    assert [v.variant for v in views] == ["kl_coef=0.1", "kl_coef=0.2"]
    frontier = report.build_frontier(views, [report.summary_table(v) for v in views])
    # ReMax reaches the smallest KL: at beta 0.1, rate 0.01, its last evaluation (iteration 19) pairs with the
    # mean of kl over iterations 17..19: 0.01 x 19 = 0.19 nats (beta 0.2 halves it).
    assert frontier.equal_kl == pytest.approx(0.19)
    points = frontier.points
    assert set(points["source"]) == {"before training", "held-out evaluation"}
    assert len(points) == 2 * 2 * SEEDS * (1 + ITERATIONS // EVERY)  # both betas pooled
    at = frontier.at_equal_kl.set_index(["algorithm", "seed"])["score"]
    for algo in RATE:
        for seed in range(SEEDS):
            assert at[(algo, seed)] == pytest.approx(0.5 + (SLOPE[algo] + 0.01 * seed) * 0.19)
    assert "±2 iterations" in frontier.kl_text


def test_headline_has_intervals_probabilities_and_words(swept):
    _, index = swept
    md = (index.parent / "summary.md").read_text()
    headline = md.split("## Headline")[1].split("## Reward-KL frontier")[0]
    # ReMax at equal KL: mean of 0.5 + (2 + 0.01 k) 0.19 over k = 0..4 = 0.5 + 2.02 x 0.19 = 0.8838.
    assert "equal KL (0.19 nats)" in headline and "| ReMax | 5 |" in headline and "0.884 [" in headline
    assert "IQM (kl_coef=0.1)" in headline  # five seeds: the interquartile mean applies
    # Every ReMax seed beats every PPO seed at equal KL: P(PPO > ReMax) = 0, resolved at five seeds each.
    assert ("held-out gold reward at equal KL (0.19 nats): ReMax is better than PPO (P(PPO > ReMax) = 0.00 "
            "[0.00, 0.00], 5 seeds each).") in headline
    assert "KL regularisation: matched" in md
    table = pd.read_csv(index.parent / "summary.csv")
    assert set(table["variant"]) == {"kl_coef=0.1", "kl_coef=0.2"}
    assert (index.parent / "frontier.png").is_file() and (index.parent / "kl_coef=0.2" / "kl_vs_step.png").is_file()
    page = index.read_text()
    assert "src='frontier.png'" in page and "src='kl_coef=0.1/reward_vs_step.png'" in page


def test_a_departure_from_shared_kl_is_flagged(tmp_path):
    root = build_sweep(tmp_path / "results")
    for seed in range(SEEDS):
        path = root / "ppo@kl_coef=0.1" / f"seed{seed}" / "summary.json"
        summary = json.loads(path.read_text())
        summary["kl_treatment"] = {"estimator": "k3", "placement": "loss", "shape": "return_to_go"}
        path.write_text(json.dumps(summary))
    views = report.load_sweep(root.parent, "nano")
    lines = report.tables.kl_lines(views[0])
    assert lines == ["NOT MATCHED: PPO regularised with its own KL, beta * k3 in the loss (shared.kl: -beta * k1 "
                     "per-token reward, return-to-go); its comparison with the others is not on equal terms"]
    assert report.tables.kl_lines(views[1])[0].startswith("KL regularisation: matched")


def test_without_a_gold_scorer_the_judges_score_meets_the_end_of_training_kl(tmp_path):
    from test_report import build_tree

    root = build_tree(tmp_path / "results")
    for path in root.glob("*/seed*/summary.json"):
        summary = json.loads(path.read_text())
        summary.pop("heldout_gold_reward", None)
        path.write_text(json.dumps(summary))
    for path in root.glob("*/seed*/metrics.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "heldout_gold_reward"}) + "\n"
                                for r in rows))
    views = report.load_sweep(root.parent, "tiny")
    frontier = report.build_frontier(views, [report.summary_table(v) for v in views])
    assert frontier.score == "MT-bench score (1–10)"
    points = frontier.points.set_index(["algorithm", "seed", "source"])
    # ReMax seed 1: its MT-bench score 6.4 at its end-of-training KL (the last logged kl: 0.008 x 3), SFT's 4.2 at 0.
    assert points.loc[("remax", 1, "end of training"), "kl"] == pytest.approx(0.024)
    assert points.loc[("remax", 1, "end of training"), "score"] == pytest.approx(6.4)
    assert points.loc[("remax", 1, "before training"), "score"] == pytest.approx(4.2)
    # PPO reaches 0.03, ReMax 0.024: at 0.024 PPO's seed 0 is 4.0 + (5.0 - 4.0) x 0.024 / 0.03 = 4.8.
    assert frontier.equal_kl == pytest.approx(0.024)
    at = frontier.at_equal_kl.set_index(["algorithm", "seed"])["score"]
    assert at[("ppo", 0)] == pytest.approx(4.8) and at[("remax", 0)] == pytest.approx(6.0)
    assert "DPO: no KL to the reference measured" in frontier.left_out[0]
