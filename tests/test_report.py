import copy
import json
import math
import re
from html.parser import HTMLParser

import pandas as pd
import pytest

from remax_bench import report
from remax_bench.core.suite_file import load_suite
from remax_bench.report.tables import override_lines

MIB = 2**20
SUITE = load_suite("tiny").resolved()

# Hand numbers. Seed 1 is seed 0 scaled by 1.1 (memory and time), so the ratios are the same on both seeds:
# ReMax saves 1 - 110/200 = 45.0% of PPO's peak and 1 - 60/100 = 40.0% of its model states, and is
# 2.0 / 1.25 = 1.6x faster per iteration.
STATES = {
    "ppo": {"policy": (10, 10, 20), "reference": (10, 0, 0), "reward": (10, 0, 0), "critic": (10, 10, 20)},  # 100
    "remax": {"policy": (10, 10, 20), "reference": (10, 0, 0), "reward": (10, 0, 0)},  # 60
    "dpo": {"policy": (10, 10, 20), "reference": (10, 0, 0)},  # 50
    "sft": {"policy": (10, 10, 20)},
}
PEAK = {"ppo": 200, "remax": 110, "dpo": 90, "sft": 60}
TIME = {"ppo": 2.0, "remax": 1.25, "dpo": 0.5, "sft": 0.1}
SPLIT = {"ppo": (0.8, 0.4, 0.6), "remax": (0.6, 0.3, 0.3), "dpo": (0.0, 0.0, 0.5)}
GOLD = {"sft": (0.50, 0.52), "ppo": (0.60, 0.62), "remax": (0.70, 0.66), "dpo": (0.55, 0.57)}


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _manifest(stage, seed, suite=SUITE, status="completed", **extra):
    return {"stage": stage, "seed": seed, "status": status, "config": {"stage": stage, "seed": seed, "suite": suite},
            "config_hash": f"{stage}{seed}", "suite_hash": "abc123def456", "device": "cpu",
            "device_name": "x86_64", "torch_threads": 2, **extra}


def _stage(root, stage, seed, summary, metrics=(), suite=SUITE):
    d = root / stage / f"seed{seed}"
    _write(d / "manifest.json", _manifest(stage, seed, suite))
    _write(d / "summary.json", {"stage": stage, "algorithm": stage, "seed": seed, "status": "completed", **summary})
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def _algo_summary(algo, seed):
    scale = 1.1 if seed == 1 else 1.0
    states = {c: {"params": p * MIB, "grads": g * MIB, "optimizer": o * MIB} for c, (p, g, o) in STATES[algo].items()}
    summary = {
        "wall_time_s": 40.0 * scale, "iterations": 4, "peak_memory_bytes": int(PEAK[algo] * scale * MIB),
        "memory_kind": "rss_above_baseline", "model_state_bytes": states,
        "model_state_total_bytes": sum(sum(v.values()) for v in states.values()),
        "time_per_iteration_s": TIME[algo] * scale, "tokens_per_second": 100.0 / (TIME[algo] * scale),
        "heldout_gold_reward": GOLD[algo][seed],
    }
    if algo in SPLIT:
        summary["time_split_s"] = dict(zip(("generate", "score", "train"), (t * scale for t in SPLIT[algo])))
    if algo in ("ppo", "remax"):
        summary["final_reward_mean"] = 0.4 + 0.1 * seed
    return summary


def _metrics(algo, seed):
    rows = []
    for step in range(4):
        row = {"step": step, "wall_time_s": 10.0 * (step + 1) + seed, "loss": 1.0 - 0.1 * step}
        if algo in ("ppo", "remax"):
            row.update(reward_mean=(0.1 if algo == "ppo" else 0.13) * step + 0.05 * seed,
                       kl=(0.01 if algo == "ppo" else 0.008) * step, time_generate_s=0.5,
                       time_score_s=0.2, time_train_s=0.3, tokens=200, generated_tokens=200 * (step + 1))
            if step % 2:
                row["heldout_gold_reward"] = 0.5 + 0.05 * step
        if algo == "dpo":
            row.update(accuracy=0.5 + 0.1 * step, reward_margin=0.1 * step)
        rows.append(row)
    return rows


NOT_ESTIMABLE = "not estimable: the longer output won each of the 100 decided pairs, so length alone explains it"


def _eval_summary(seed):
    if seed == 0:  # win rates as fractions: the report turns them into percent
        rows = [
            {"name": "sft", "win_rate": 0.5, "win_rate_ci": [0.45, 0.55], "mt_bench_score": 4.0, "mt_bench_ci": [3.5, 4.5]},
            {"name": "ppo", "win_rate": 0.70, "win_rate_se": 0.02, "win_rate_ci": [0.66, 0.74], "lc_win_rate": None,
             "n": 128, "n_unjudged": 3, "mt_bench_n_unjudged": 2, "mt_bench_n_judgments": 256, "mt_bench_score": 5.0,
             "mt_bench_ci": [4.5, 5.5]},
            {"name": "remax", "win_rate": 0.80, "win_rate_ci": [0.75, 0.85], "mt_bench_score": 6.0,
             "mt_bench_ci": [5.5, 6.5], "mt_bench_turn1": 6.2, "mt_bench_turn2": 5.8, "n": 128, "n_unjudged": 0,
             "lc_win_rate": None, "lc_not_estimable": NOT_ESTIMABLE},
            {"name": "dpo", "win_rate": 0.60, "win_rate_ci": [0.55, 0.65], "mt_bench_score": 4.5, "lc_win_rate": 0.57},
        ]
    else:  # already percent
        rows = [
            {"name": "sft", "win_rate": 50.0, "mt_bench_score": 4.2},
            {"name": "ppo", "win_rate": 72.0, "win_rate_ci": [68.0, 76.0], "mt_bench_score": 5.2, "mt_bench_ci": [4.7, 5.7]},
            {"name": "remax", "win_rate": 76.0, "win_rate_ci": [71.0, 81.0], "mt_bench_score": 6.4, "mt_bench_ci": [5.9, 6.9],
             "n": 128, "n_unjudged": 2, "lc_win_rate": None, "lc_not_estimable": NOT_ESTIMABLE},
            {"name": "dpo", "win_rate": 58.0, "win_rate_ci": [53.0, 63.0], "mt_bench_score": 4.7, "lc_win_rate": 55.0},
        ]
    return {"n_prompts": 128, "rows": rows}


def build_tree(results, algorithms=("ppo", "remax", "dpo"), seeds=(0, 1), with_eval=True):
    root = results / "tiny"
    for seed in seeds:
        _stage(root, "sft", seed, _algo_summary("sft", seed), [{"step": 0, "wall_time_s": 1.0, "loss": 2.0}])
    _stage(root, "reward_model", 0, {"heldout_accuracy": 0.8, "heldout_accuracy_before": 0.5, "peak_memory_bytes": MIB})
    for seed in seeds:
        for algo in algorithms:
            _stage(root, algo, seed, _algo_summary(algo, seed), _metrics(algo, seed))
        if with_eval:
            _stage(root, "eval", seed, _eval_summary(seed))
    return root


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    base = tmp_path_factory.mktemp("full")
    build_tree(base / "results")
    index = report.write_report(base / "results", base / "reports", "tiny", dpi=40)
    return index


def test_writes_every_file(full):
    out = full.parent
    assert full.name == "index.html" and out.name == "tiny"
    for name in ("summary.csv", "summary.md", *report.PLOT_FILES):
        assert (out / name).is_file(), name


def test_summary_csv_hand_numbers(full):
    table = pd.read_csv(full.parent / "summary.csv")
    assert sorted(set(table.algorithm)) == ["dpo", "ppo", "remax", "sft"]
    by = table.set_index(["algorithm", "seed"])
    for seed in (0, 1):
        remax = by.loc[("remax", seed)]
        assert remax.peak_memory_saving_vs_ppo_pct == pytest.approx(45.0)
        assert remax.model_state_saving_vs_ppo_pct == pytest.approx(40.0)
        assert remax.speedup_vs_ppo_x == pytest.approx(1.6)
        assert by.loc[("ppo", seed)].speedup_vs_ppo_x == pytest.approx(1.0)
    assert by.loc[("remax", 0)].peak_memory_mib == pytest.approx(110.0)
    assert by.loc[("ppo", 1)].time_per_iteration_s == pytest.approx(2.2)
    assert by.loc[("ppo", 0)].model_state_critic_mib == pytest.approx(40.0)
    assert by.loc[("dpo", 0)].peak_memory_saving_vs_ppo_pct == pytest.approx(55.0)
    assert pd.isna(by.loc[("sft", 0)].speedup_vs_ppo_x)
    # Win rates: fractions on seed 0 and percent on seed 1 both come out in percent.
    assert by.loc[("remax", 0)].win_rate_pct == pytest.approx(80.0)
    assert by.loc[("remax", 0)].win_rate_ci_lo_pct == pytest.approx(75.0)
    assert by.loc[("remax", 1)].win_rate_pct == pytest.approx(76.0)
    assert by.loc[("ppo", 0)].mt_bench_score == pytest.approx(5.0)
    # Final KL falls back to the last 10% of logged steps (here the last of 4): 0.03.
    assert by.loc[("ppo", 0)].final_kl == pytest.approx(0.03)
    assert by.loc[("remax", 1)].final_reward_mean == pytest.approx(0.5)
    assert by.loc[("ppo", 0)].time_generate_s == pytest.approx(0.8)


def test_summary_md_aggregates_and_quotes_the_paper(full):
    md = (full.parent / "summary.md").read_text()
    # ReMax gold reward: mean of 0.70 and 0.66; two seeds' percentile bootstrap interval is their range.
    summary = md.split("## Summary")[1]
    assert re.search(r"\| ReMax \| 2 \| 0\.680 \[0\.660, 0\.700\] \|", summary)
    assert "45.0% (per seed: 45.0%, 45.0%; 95% interval over seeds [45.0%, 45.0%])" in md
    assert "1.60x (per seed: 1.60x, 1.60x; 95% interval over seeds [1.60x, 1.60x])" in md and "40.0%" in md
    assert "55.0% (95% interval over seeds [55.0%, 55.0%])" in md  # DPO's peak memory saving
    assert "~46% less GPU memory" in md and "~1.6x faster training" in md
    assert "94.78%" in md and "7.739" in md and "Li et al. 2023" in md
    assert "shared, runtime blocks of the algorithms): none" in md
    assert "peak memory: rss_above_baseline" in md
    assert "reward model (seed 0): held-out pairwise accuracy 0.800 (0.500 before training)" in md
    assert "none" in md.split("## Failed or missing stages")[1].split("##")[0]


def test_html_references_every_png(full):
    out = full.parent
    page = full.read_text()
    srcs = set(re.findall(r"<img src='([^']+)'", page))
    assert srcs == {p.name for p in out.glob("*.png")}
    assert "abc123def456" in page and "<table" in page and "tiny" in page
    assert "paper" in page.lower() and "94.78" in page


def test_memory_and_time_breakdowns_add_up(tmp_path):
    res = report.load_results(build_tree(tmp_path / "results").parent, "tiny")
    mem = report.memory_breakdown(res)
    # PPO: measured peak 200 and 220 MiB -> 210; model states 100 MiB -> other 110.
    assert mem.loc["ppo", "measured peak"] == pytest.approx(210.0)
    assert mem.loc["ppo", report.OTHER_MEMORY] == pytest.approx(110.0)
    assert mem.loc["ppo", "critic optimizer"] == pytest.approx(20.0)
    assert "critic params" not in mem.columns or mem.loc["remax", "critic params"] == 0
    times = report.time_breakdown(report.summary_table(res))
    # PPO: total (2.0 + 2.2) / 2 = 2.1, phases 1.8 * 1.05 = 1.89 -> other 0.21.
    assert times.loc["ppo", "total"] == pytest.approx(2.1)
    assert times.loc["ppo", "other"] == pytest.approx(0.21)
    assert times.loc["dpo", "generate"] == 0.0


def test_what_differed_names_the_field_and_runs(tmp_path):
    root = build_tree(tmp_path / "results", with_eval=False)
    res = report.load_results(root.parent, "tiny")
    assert report.what_differed(res.manifests) == []
    changed = copy.deepcopy(SUITE)
    changed["shared"]["learning_rate"] = 2e-4
    _write(root / "remax" / "seed1" / "manifest.json", _manifest("remax", 1, changed))
    lines = report.what_differed(report.load_results(root.parent, "tiny").manifests)
    assert len(lines) == 1
    assert lines[0].startswith("shared.learning_rate: 0.0001 (")
    assert "0.0002 (remax/seed1)" in lines[0]


def test_partial_results_still_report(tmp_path):
    root = build_tree(tmp_path / "results", algorithms=("ppo", "remax"), with_eval=False)
    failed = root / "remax" / "seed2.failed"
    _write(failed / "manifest.json", _manifest("remax", 2, status="failed", error="NonFiniteError: loss is not finite\ntrace"))
    (root / "ppo" / ".seed2.partial").mkdir()
    stale = tmp_path / "reports" / "tiny" / "win_rate.png"  # from an older report that had eval results
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    index = report.write_report(tmp_path / "results", tmp_path / "reports", "tiny", dpi=30)
    out = index.parent
    assert not (out / "win_rate.png").exists() and not (out / "mt_bench.png").exists()
    assert (out / "memory_by_component.png").is_file() and (out / "reward_vs_step.png").is_file()
    page = index.read_text()
    assert "eval stage did not run" in page
    assert "remax/seed2: failed — NonFiniteError: loss is not finite" in page
    assert "ppo/seed2: partial" in page
    # The suite plans dpo and eval for seeds 0 and 1: they are listed as missing.
    assert "dpo/seed0: missing" in page and "eval/seed1: missing" in page
    assert "algorithms without a result: DPO" in page
    assert set(re.findall(r"<img src='([^']+)'", page)) == {p.name for p in out.glob("*.png")}
    assert "45.0%" in (out / "summary.md").read_text()


def test_no_complete_stage_is_a_clear_error(tmp_path):
    failed = tmp_path / "results" / "tiny" / "ppo" / "seed0.failed"
    _write(failed / "manifest.json", _manifest("ppo", 0, status="failed", error="boom"))
    with pytest.raises(report.ReportError, match=r"no complete stage .*ppo/seed0 \(failed\)"):
        report.write_report(tmp_path / "results", tmp_path / "reports", "tiny")
    with pytest.raises(report.ReportError, match="suites found: tiny"):
        report.write_report(tmp_path / "results", tmp_path / "reports", "nope")


def test_suite_name_is_found_when_not_given(tmp_path):
    build_tree(tmp_path / "results", algorithms=("remax",), seeds=(0,), with_eval=False)
    assert report.resolve_suite_name(tmp_path / "results", None) == (tmp_path / "results", "tiny")
    assert report.resolve_suite_name(tmp_path / "results" / "tiny", None) == (tmp_path / "results", "tiny")


def test_win_rates_as_fractions_become_percent():
    rows = report.eval_rows({"rows": [{"name": "remax", "win_rate": 0.25, "win_rate_se": 0.05, "lc_win_rate": 0.3}]}, 0, "sft")
    assert rows[0]["win_rate_pct"] == pytest.approx(25.0)
    assert rows[0]["lc_win_rate_pct"] == pytest.approx(30.0)
    # No CI given: centre ± 1.96 standard errors.
    assert rows[0]["win_rate_ci_lo_pct"] == pytest.approx(25.0 - 1.96 * 5.0)
    assert rows[0]["reference"] == "sft"


def test_ratio_against_a_zero_or_missing_baseline_is_nan():
    from remax_bench import comparison

    assert comparison.ratio(1.0, 0.0) != comparison.ratio(1.0, 0.0)  # NaN
    assert comparison.ratio(float("nan"), 2.0) != comparison.ratio(float("nan"), 2.0)
    assert comparison.ratio(None, 2.0) != comparison.ratio(None, 2.0)
    assert comparison.ratio(3.0, 2.0) == 1.5
    assert comparison.saving(3.0, 4.0) == 0.25  # 25% less memory than PPO
    assert comparison.speedup(2.0, 3.0) == 1.5  # PPO takes 3 s, the algorithm 2 s


def test_cost_and_quality_per_generated_token(tmp_path):
    from remax_bench.report import load_results, summary_table

    root = build_tree(tmp_path / "results", algorithms=("ppo", "remax"), seeds=(0,), with_eval=False)
    summary = json.loads((root / "remax" / "seed0" / "summary.json").read_text())
    summary.update(generated_tokens=5000, heldout_gold_reward_before=0.5)
    (root / "remax" / "seed0" / "summary.json").write_text(json.dumps(summary))
    table = summary_table(load_results(tmp_path / "results", "tiny")).set_index("algorithm")
    remax, ppo = table.loc["remax"], table.loc["ppo"]
    # the summary's own count; PPO's summary has none, so its metrics' per-step tokens are summed: 4 x 200
    assert remax["generated_tokens"] == 5000 and ppo["generated_tokens"] == 800
    assert remax["time_per_1k_generated_tokens_s"] == pytest.approx(1000 / remax["tokens_per_second"])
    # (gold - gold before) per 10k generated tokens
    assert remax["gold_gain_per_10k_tokens"] == pytest.approx(1e4 * (remax["heldout_gold_reward"] - 0.5) / 5000)
    assert math.isnan(ppo["gold_gain_per_10k_tokens"])  # no figure before training: no gain to report


def test_unjudged_pairs_and_turns_are_in_the_csv_and_the_markdown(full):
    table = pd.read_csv(full.parent / "summary.csv")
    ppo = table[(table.algorithm == "ppo") & (table.seed == 0)].iloc[0]
    assert ppo["n_unjudged"] == 3 and ppo["mt_bench_n_unjudged"] == 2
    md = (full.parent / "summary.md").read_text()
    assert "unjudged AlpacaEval pairs" in md and "unjudged MT-bench turns" in md


def test_overrides_are_shown_and_trackers_are_no_difference(tmp_path):
    root = build_tree(tmp_path / "results", with_eval=False)
    watched = copy.deepcopy(SUITE)
    watched["runtime"]["trackers"] = ["wandb"]  # watched differently: the same run
    _write(root / "remax" / "seed1" / "manifest.json", _manifest("remax", 1, watched))
    res = report.load_results(root.parent, "tiny")
    assert report.what_differed(res.manifests) == [] and override_lines(res.manifests) == []
    for key, manifest in res.manifests.items():
        manifest["config"]["overrides"] = ["shared.kl_coef=0.1"] if key != ("ppo", 0) else []
    line = override_lines(res.manifests)[0]
    assert line.startswith("command-line overrides of the suite file DIFFERS: --set shared.kl_coef=0.1 (dpo/seed0,")
    assert line.endswith("; none (ppo/seed0)")
    for manifest in res.manifests.values():
        manifest["config"]["overrides"] = ["shared.kl_coef=0.1", "seeds=[0,1]"]
    assert override_lines(res.manifests) == ["command-line overrides of the suite file: --set shared.kl_coef=0.1 "
                                             "--set seeds=[0,1] (every stage)"]


def test_the_report_is_logged_to_the_trackers_of_its_runs(full):
    """The suite's stages name TensorBoard (the default): the report's plots and tables land beside their runs."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    from tracker_files import tensorboard_run

    run = tensorboard_run(full.parent.parent.parent / "results" / "tiny" / "tensorboard" / "report")
    plots = {f"plots/{Path(name).stem}" for name in (*report.PLOT_FILES, "frontier.png") if (full.parent / name).is_file()}
    assert set(run.Tags()["images"]) == plots and plots
    texts = {tag.removesuffix("/text_summary") for tag in run.Tags()["tensors"]}
    assert {"summary", "per_seed", "remax_vs_ppo", "config", "run"} <= texts
    summary = run.Tensors("summary/text_summary")[0].tensor_proto.string_val[0].decode()
    assert summary.startswith("| algorithm |") and "ReMax" in summary


def test_judged_figures_carry_their_unjudged_count_and_lc_says_why_it_is_not_estimable(full):
    md = (full.parent / "summary.md").read_text()
    table = md.split("## Summary")[1]
    # PPO: 3 of its 128 pairs unjudged (seed 0) beside the mean win rate, 2 of 256 MT-bench turns beside its score.
    assert re.search(r"\| PPO \| 2 \|.*\| 71\.00 \[70\.00, 72\.00\] \(3 of 128 pairs unjudged\) \|", table)
    assert "5.10 [5.00, 5.20] (2 of 256 turns unjudged)" in table
    # ReMax: the win rate over both seeds leaves 2 of 256 pairs out; its LC fit measures nothing on either seed.
    assert "78.00 [76.00, 80.00] (2 of 256 pairs unjudged)" in table
    remax = next(line for line in table.splitlines() if line.startswith("| ReMax |"))
    assert "not estimable (see the notes)" in remax
    assert f"- ReMax length-controlled win rate (seed 0, 1): {NOT_ESTIMABLE}" in md
    dpo = next(line for line in table.splitlines() if line.startswith("| DPO |"))
    assert "| 56.00 [55.00, 57.00] |" in dpo  # a real estimate where there is one (57% and 55%)
    paper = md.split("## ReMax vs PPO")[1].split("##")[0]
    assert "(2 of 256 pairs unjudged)" in paper  # the paper's comparison says it too


def test_warnings_of_the_stages_are_in_the_report(tmp_path):
    root = build_tree(tmp_path / "results", seeds=(0,))
    manifest = json.loads((root / "eval" / "seed0" / "manifest.json").read_text())
    manifest["warnings"] = ["remax: 46 of 160 MT-bench prompts (turns) were longer than the context leaves room for"]
    _write(root / "eval" / "seed0" / "manifest.json", manifest)
    index = report.write_report(tmp_path / "results", tmp_path / "reports", "tiny", dpi=40)
    md = (index.parent / "summary.md").read_text()
    assert "- eval/seed0: remax: 46 of 160 MT-bench prompts (turns) were longer" in md.split("## Warnings")[1]
    assert "46 of 160 MT-bench prompts" in index.read_text()


class _Tables(HTMLParser):
    """Each <table> of a page: its header cells, its widest row's cell count, and whether a scroll box holds it."""

    def __init__(self):
        super().__init__()
        self.tables, self.boxes, self.row = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "div":
            self.boxes.append(dict(attrs).get("class") == "scroll")
        elif tag == "table":
            self.tables.append({"header": [], "columns": 0, "in_scroll_box": any(self.boxes)})
        elif tag == "tr":
            self.row = []
        elif tag in ("td", "th") and self.row is not None:
            self.row.append("")

    def handle_endtag(self, tag):
        if tag == "div":
            self.boxes.pop()
        elif tag == "tr" and self.row is not None:
            table = self.tables[-1]
            table["header"] = table["header"] or self.row
            table["columns"] = max(table["columns"], len(self.row))
            self.row = None

    def handle_data(self, data):
        if self.row:
            self.row[-1] += data.strip()


def _page_tables(page: str) -> list[dict]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def test_the_page_tables_fit_a_1280_px_window(full):
    """Looked at in headless Chromium at 1280 px (see the note in remax_bench/report/render.py): a table of at
    most nine columns of these figures fits the page's 1100 px, wrapping 'mean ± std'; wider ones did not."""
    from remax_bench.report.load import POLICY_STAGES
    from remax_bench.report.render import RUNS_PER_TABLE

    tables = _page_tables(full.read_text())
    # The headline's tables come first; the summary is the first table by figure.
    first = next(i for i, table in enumerate(tables) if table["header"][0] == "figure")
    summary, *per_seed, paper = tables[first:]
    # The summary has a row per figure and a column per algorithm, not a column per figure.
    assert summary["header"] == ["figure", "SFT", "PPO", "ReMax", "DPO"]
    assert [t["header"][0] for t in per_seed] == ["field", "field"]  # 8 runs: two tables of 4
    assert [t["columns"] for t in per_seed] == [5, 5] and max(t["columns"] for t in per_seed) <= 1 + RUNS_PER_TABLE
    assert paper["header"][0] == "figure"
    assert all(t["columns"] <= 1 + len(POLICY_STAGES) for t in tables)
    assert all(t["in_scroll_box"] for t in tables)  # anything wider scrolls in its box, not the page


def test_only_algorithms_the_suite_asked_for_are_missing(full, tmp_path):
    page = full.read_text()
    assert "algorithms without a result" not in page  # tiny enables PPO, ReMax and DPO, and all three ran
    root = build_tree(tmp_path / "results", algorithms=("ppo", "remax"), seeds=(0,), with_eval=False)
    asked = copy.deepcopy(SUITE)
    asked["grpo"]["enabled"] = True
    _write(root / "remax" / "seed0" / "manifest.json", _manifest("remax", 0, asked, start="2030-01-01T00:00:00"))
    page = report.write_report(tmp_path / "results", tmp_path / "reports", "tiny", dpi=30).read_text()
    assert "algorithms without a result: DPO, GRPO" in page and "REINFORCE" not in page


def test_fields_are_compared_among_the_runs_that_read_them(tmp_path):
    root = build_tree(tmp_path / "results", seeds=(0,), with_eval=False)
    newer = copy.deepcopy(SUITE)
    newer["data"]["prompts"] = {**newer["data"]["prompts"], "max_examples": 100}
    newer["dpo"]["beta"] = 0.5  # DPO's own block: never compared
    for stage in ("ppo", "remax"):  # a new prompt set reran the online algorithms; DPO, which reads none, was kept
        _write(root / stage / "seed0" / "manifest.json",
               _manifest(stage, 0, newer, start="2030-01-01T00:00:00", suite_hash="fedcba987654"))
    res = report.load_results(root.parent, "tiny")
    assert report.what_differed(res.manifests) == []
    _write(root / "remax" / "seed0" / "manifest.json", _manifest("remax", 0, SUITE, start="2030-01-01T00:00:00"))
    lines = report.what_differed(report.load_results(root.parent, "tiny").manifests)
    assert len(lines) == 1 and lines[0].startswith("data.prompts.max_examples: ") and "dpo" not in lines[0]


def test_the_config_hash_names_stages_kept_from_an_earlier_config(tmp_path):
    from remax_bench.report.tables import _suite_hashes

    root = build_tree(tmp_path / "results", seeds=(0,), with_eval=False)
    newer = copy.deepcopy(SUITE)
    newer["shared"]["iterations"] = 80  # read by the algorithms, not by SFT or the reward model
    for stage in ("ppo", "remax", "dpo"):
        _write(root / stage / "seed0" / "manifest.json",
               _manifest(stage, 0, newer, start="2030-01-01T00:00:00", suite_hash="fedcba987654"))
    text = _suite_hashes(report.load_results(root.parent, "tiny"))
    assert text == "fedcba987654 (reward_model/seed0, sft/seed0 kept from an earlier config: the fields they read " \
                   "are unchanged)"
    older = copy.deepcopy(SUITE)
    older["sft"]["epochs"] = 1  # an SFT trained under other SFT settings was not kept by the runner: say so
    _write(root / "sft" / "seed0" / "manifest.json", _manifest("sft", 0, older))
    assert _suite_hashes(report.load_results(root.parent, "tiny")).startswith("several: ")
