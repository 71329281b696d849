"""A judge that fails is never a result: `remax-bench run` against an OpenAI-compatible stand-in on 127.0.0.1.

One suite (a given SFT checkpoint, DPO for one iteration, eval against a second checkpoint) meets a judge that
refuses connections, then one that answers with server errors for its first few requests, then one that
answers: the eval stage fails twice with the cause in one line and no figure in the report, and the third
run asks the judge for exactly the items still unjudged.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from fake_openai_server import FakeOpenAI, default_reply  # noqa: E402

from remax_bench.core.config import Eval  # noqa: E402
from remax_bench.core.models import build_tiny_model, save_pretrained  # noqa: E402
from remax_bench.core.suite_file import load_suite_text  # noqa: E402
from remax_bench.evaluation import evaluate_checkpoint  # noqa: E402
from remax_bench.evaluation.unjudged import JudgingFailed, cause, main_cause  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
KEY_ENV = "REMAX_BENCH_TEST_JUDGE_KEY"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


EVAL = {
    "enabled": True, "backend": "hf", "generation": {"max_new_tokens": 8},
    "alpaca_eval": {"prompts": "synthetic", "max_instances": 8, "annotator": None},
    "mt_bench": {"questions": "synthetic", "max_questions": 3, "judge_prompts": str(FIXTURES / "judge_prompts.jsonl")},
}


def _judge(port: int) -> dict:
    return {"type": "openai", "model": "judge", "base_url": f"http://127.0.0.1:{port}/v1", "api_key_env": KEY_ENV,
            "max_retries": 0}


def _unjudged_keys(folder: Path) -> set[str]:
    """The cache keys (judge, kind, exact messages) of the items an attempt left unjudged."""
    keys = set()
    for path in folder.glob("*/*_judgments.jsonl"):
        for row in map(json.loads, path.read_text().splitlines()):
            if ("preference" in row and row["preference"] is None) or row.get("score") == -1:
                keys.add(row["key"])
    return keys


def _cached_keys(cache: Path) -> set[str]:
    return {json.loads(line)["key"] for line in cache.read_text().splitlines()} if cache.is_file() else set()


def test_a_failing_judge_fails_the_stage_and_a_rerun_asks_only_for_what_is_unjudged(tmp_path, monkeypatch):
    from remax_bench.core.stage import stage_main
    from remax_bench.evaluation.stage import evaluate

    monkeypatch.setenv(KEY_ENV, "sk-test")
    monkeypatch.setenv("REMAX_BENCH_CACHE", str(tmp_path / "cache"))
    checkpoints = {name: str(save_pretrained(*build_tiny_model("tiny:nano", seed), tmp_path / name))
                   for name, seed in (("sft", 0), ("remax", 1))}
    port = _free_port()
    data = yaml.safe_load((FIXTURES / "nano.yaml").read_text())
    data["eval"] = {**EVAL, "judge": _judge(port)}
    suite = load_suite_text(yaml.safe_dump(data))
    config = tmp_path / "eval.json"
    config.write_text(json.dumps({"stage": "eval", "seed": 0, "suite": suite.resolved(),
                                  "inputs": {"checkpoints": checkpoints}}))
    final = tmp_path / "results" / "nano" / "eval" / "seed0"
    failed = final.with_name("seed0.failed")
    stage = ["--config", str(config), "--out", str(final)]

    # 1. Nothing listens on the judge's port: every item unjudged, the stage fails, no figure is written.
    assert stage_main("eval", evaluate, stage) == 1
    error = json.loads((failed / "manifest.json").read_text())["error"].splitlines()[0]
    assert error.startswith("JudgingFailed: judging failed, so no figure is written: unjudged above "
                            "eval.max_unjudged_fraction=0.02 (sft: 6 of 6 MT-bench turns; remax: ")
    assert f"the judge openai:judge at http://127.0.0.1:{port}/v1 could not be reached (connection refused" in error
    assert not final.exists() and not list(failed.glob("eval/*/alpaca_eval.json"))
    assert not list(failed.glob("eval/*/mt_bench.json")) and not (failed / "eval" / "summary.json").exists()
    assert len(_unjudged_keys(failed / "eval")) > 3

    # 2. The judge answers, but with server errors for its first three requests: still above the 2% allowed.
    failures = {"left": 3}

    def flaky(body, headers):
        with server.lock:
            if failures["left"] > 0:
                failures["left"] -= 1
                return 500, "overloaded"
        return default_reply(body, headers)

    with FakeOpenAI(flaky, port=port) as server:
        assert stage_main("eval", evaluate, stage) == 1
        error = json.loads((failed / "manifest.json").read_text())["error"].splitlines()[0]
        assert "answered with server errors (5xx)" in error
        asked = len(server.chat_requests())
        # Items asked again later in the same attempt (the same answer of another checkpoint) have their verdict.
        pending = _unjudged_keys(failed / "eval") - _cached_keys(tmp_path / "cache" / "judgments.jsonl")
        assert asked > 3 and 1 <= len(pending) <= 3

        # 3. The judge has recovered: exactly the unjudged items are asked again, every verdict is reused.
        assert stage_main("eval", evaluate, stage) == 0
        assert len(server.chat_requests()) == asked + len(pending)
    summary = json.loads((final / "summary.json").read_text())
    assert all(r["n_unjudged"] == 0 and r["mt_bench_n_unjudged"] == 0 for r in summary["rows"])
    assert summary["rows"][1]["win_rate"] is not None  # the runner then discards the failed attempt


@pytest.mark.slow
def test_remax_bench_run_exits_non_zero_and_the_report_shows_no_figure(tmp_path):
    """The same refusing judge through `remax-bench run` (a given SFT model, DPO for one iteration, eval) and
    `remax-bench report`."""
    data = yaml.safe_load((FIXTURES / "nano.yaml").read_text())
    data["shared"]["iterations"] = 1
    sft = save_pretrained(*build_tiny_model("tiny:nano", 0), tmp_path / "sft")
    data.update(sft={"path": str(sft)}, ppo={"enabled": False}, remax={"enabled": False})
    data["eval"] = {**EVAL, "judge": _judge(_free_port())}
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONPATH": str(REPO), KEY_ENV: "sk-test", "REMAX_BENCH_CACHE": str(tmp_path / "cache")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "remax_bench.cli", *args], capture_output=True, text=True,
                              env=env, timeout=600, cwd=tmp_path)

    run = cli("run", str(suite), "--results-dir", str(tmp_path / "results"))
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "eval/seed0: FAILED" in out and "could not be reached (connection refused" in out, out
    assert (tmp_path / "results" / "nano" / "dpo" / "seed0" / "summary.json").is_file()
    report = cli("report", str(tmp_path / "results"), "--out", str(tmp_path / "reports"))
    assert report.returncode == 0, report.stdout + report.stderr
    md = (tmp_path / "reports" / "nano" / "summary.md").read_text()
    assert "eval/seed0: failed — JudgingFailed: judging failed, so no figure is written" in md
    table = md.split("## Summary")[1].split("\n\n")[1]
    header, _, *lines = table.splitlines()
    for title in ("win rate vs SFT (%)", "length-controlled win rate vs SFT (%)", "MT-bench (1–10)"):
        column = header.split(" | ").index(title)
        assert lines and all(line.split(" | ")[column] == "–" for line in lines), table
    assert "DPO –" not in md and "(no eval result for DPO)" in md  # the paper table has no figure either


def test_a_judge_without_logprobs_is_named(tmp_path, monkeypatch):
    """alpaca_eval's leaderboard annotator reads its preference from log-probabilities; an endpoint that returns
    none leaves every pair unjudged, and the failure says so in one line."""
    monkeypatch.setenv(KEY_ENV, "sk-test")
    checkpoint = save_pretrained(*build_tiny_model("tiny:nano", 0), tmp_path / "ckpt")
    ev = Eval.model_validate({
        "backend": "hf", "generation": {"max_new_tokens": 4, "batch_size": 8},
        "alpaca_eval": {"prompts": str(FIXTURES / "alpaca_instructions.json")}, "mt_bench": {"enabled": False},
        "judge": {"type": "openai", "model": "judge", "api_key_env": KEY_ENV, "max_retries": 0},
    })
    reference = [{"instruction": i, "output": "GOOD", "generator": "ref"} for i in
                 ("Name a fruit.", "Count to three.", "Say hello.")]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "alpaca_eval.json").write_text('{"win_rate": 50.0}')  # an earlier run's figure
    with FakeOpenAI(logprobs=False) as fake:
        ev.judge.base_url = fake.url
        with pytest.raises(JudgingFailed) as failed:
            evaluate_checkpoint(checkpoint, ev, tmp_path / "eval", reference_outputs=reference, generator_name="nano",
                                cache_path=tmp_path / "cache.jsonl")
        assert all(r["body"].get("logprobs") for r in fake.chat_requests())  # they were asked for
    message = str(failed.value)
    assert "\n" not in message and "3 of 3 AlpacaEval pairs" in message
    assert "returned no log-probabilities, which alpaca_eval's annotator reads its preference from" in message
    assert not (tmp_path / "eval" / "alpaca_eval.json").exists()  # no figure written, none left standing
    judgments = [json.loads(line) for line in (tmp_path / "eval" / "alpaca_eval_judgments.jsonl").read_text().splitlines()]
    assert all("no log-probabilities" in j["error"] for j in judgments)


def test_the_cause_of_unjudged_items_in_words():
    assert cause("APIConnectionError: Connection error.").startswith("could not be reached")
    assert "401" in cause("AuthenticationError: Error code: 401 - ***")
    assert cause("unparseable verdict: 'maybe'") == "gave replies with no verdict the parser could read"
    assert cause("ValueError: odd\nmore") == "failed: ValueError: odd"
    mixed = main_cause(["APIConnectionError: x", "APIConnectionError: y", "RateLimitError: z"])
    assert mixed.startswith("could not be reached") and "(2 of 3; others: 1 other causes)" in mixed


def test_below_the_threshold_the_figures_count_and_carry_their_unjudged_count(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    checkpoint = save_pretrained(*build_tiny_model("tiny:nano", 0), tmp_path / "ckpt")
    ev = Eval.model_validate({
        "backend": "hf", "generation": {"max_new_tokens": 4, "batch_size": 8},
        "alpaca_eval": {"prompts": str(FIXTURES / "alpaca_instructions.json"), "annotator": None},
        "mt_bench": {"enabled": False}, "max_unjudged_fraction": 0.34,
        "judge": {"type": "openai", "model": "judge", "api_key_env": KEY_ENV, "max_retries": 0},
    })
    reference = [{"instruction": i, "output": "GOOD", "generator": "ref"} for i in
                 ("Name a fruit.", "Count to three.", "Say hello.")]

    def reply(body, headers):
        if "Say hello." in body["messages"][-1]["content"]:
            return 503, "down for this one"
        return default_reply(body, headers)

    with FakeOpenAI(reply) as fake:
        ev.judge.base_url = fake.url
        row = evaluate_checkpoint(checkpoint, ev, tmp_path / "eval", reference_outputs=reference, generator_name="nano",
                                  cache_path=tmp_path / "cache.jsonl")
    assert row["n_unjudged"] == 1 and row["n"] == 3 and row["win_rate"] is not None
    result = json.loads((tmp_path / "eval" / "alpaca_eval.json").read_text())
    assert result["n_unjudged"] == 1 and result["n_judged"] == 2
