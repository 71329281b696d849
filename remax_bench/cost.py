"""What a suite costs to run (`remax-bench estimate --suite S`): hours on its devices for every planned stage,
and the judge's calls with their price. Every figure says where it comes from.

Time. A training stage runs its iterations over a fixed number of examples each (a prompt for the online
algorithms, a preference pair for DPO and the reward model, a demonstration for SFT), so

    seconds      = iterations x examples per iteration x seconds per example  (+ a measured stage's fixed part)
    device-hours = seconds x ranks / 3600,        ranks = runtime.num_gpus x runtime.num_nodes

once per seed for the algorithms and eval, once for SFT and the reward model (``runner.plan``). Seconds per
example come from a measured run when one is given (a results folder of `remax-bench run` or `remax-bench
bench`: each stage's time per iteration over the examples its own iterations drew, plus its wall time beyond
them: loading, held-out evaluation, saving), else from the suite (``runtime.throughput``, with its source).
Carrying a measurement to other batch sizes assumes time in proportion to examples; other models, lengths,
devices or rank counts are named as caveats, not corrected for.

Money. Only an API judge (``eval.judge.type: openai``) is billed. Each eval stage (one per seed) asks it for
  AlpacaEval: one pairwise verdict per instruction for every evaluated policy against the reference (the
    reference against itself is a tie without a call), at alpaca_eval's own measured price per example of the
    annotator config (its evaluators leaderboard, "Price [$/1000 examples]"), rescaled by alpaca_eval's
    per-token prices when the suite's judge model is not the config's;
  MT-bench: FastChat's single-answer grading, one verdict per turn of every question for every model, the
    reference included (80 questions x 2 turns), priced by its tokens (``mt_bench_tokens``) at alpaca_eval's
    per-token price for the judge model.
The judgment cache makes a repeated pair free (a rerun; the same SFT answers under two seeds), so these are
the calls of a first run.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

from remax_bench.core import algorithms, results
from remax_bench.core.config import Suite

ALPACA_EVAL_SIZE = 805  # AlpacaEval's instructions (tatsu-lab/alpaca_eval, alpaca_eval.json)
MT_BENCH_SIZE, MT_BENCH_TURNS = 80, 2  # FastChat's data/mt_bench/question.jsonl
CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text; alpaca_eval's anthropic decoder counts so too
# FastChat's single-grading judge prompts (data/judge_prompts.jsonl): characters of system prompt and template
# without the filled-in fields, for turn 1 (single-v1, single-math-v1) and turn 2 (the -multi-turn pair).
MT_TEMPLATE_CHARS = {1: (651, 763), 2: (781, 949)}
# question.jsonl is 48,929 characters for 160 turns, ids, categories and short references included: at most
# 306 characters, about 76 tokens, per question turn on average.
MT_QUESTION_TOKENS = 80
MT_REFERENCE_SHARE = 30 / 80  # math, reasoning and coding questions are graded against GPT-4's reference answers
MT_JUDGE_REPLY_TOKENS = 300  # assumed: FastChat lets the judge write 2048 tokens; it writes a paragraph and "[[n]]"


class CostError(ValueError):
    """A cost that cannot be estimated as asked (an unreadable measured folder)."""


# -- time ------------------------------------------------------------------------------------------
@dataclass
class Throughput:
    seconds_per_example: float
    source: str
    fixed_s: float = 0.0  # a measured stage's wall time beyond its iterations
    caveats: list[str] = field(default_factory=list)


@dataclass
class StageTime:
    stage: str
    runs: int  # seeds for the algorithms and eval, 1 for SFT and the reward model
    iterations: int | None = None
    examples: int | None = None  # per iteration
    throughput: Throughput | None = None
    seconds_per_run: float | None = None
    note: str = ""  # why it is not estimated, or how the iterations are bounded
    given: str | None = None  # a checkpoint the suite gives instead of training this stage

    @property
    def seconds(self) -> float | None:
        return None if self.seconds_per_run is None else self.seconds_per_run * self.runs


def examples_per_iteration(suite: Suite, stage: str) -> int:
    """What one iteration of ``stage`` draws: prompts (online), pairs (DPO, reward model), demonstrations (SFT)."""
    if stage in algorithms.PREPARATION_STAGES:
        return getattr(suite, stage).batch_size
    if algorithms.get(stage).online:
        return suite.prompts_per_iteration(stage)
    return suite.shared.train_batch_size


def preparation_steps(suite: Suite, stage: str) -> tuple[int | None, str]:
    """(optimizer steps of SFT or the reward model, how they are known), as the trainers count them: epochs x
    steps per pass over the rows left after the held-out split, capped by max_steps."""
    cfg = getattr(suite, stage)
    field_name = "sft" if stage == "sft" else "preferences"
    source = getattr(suite.data, field_name)
    synthetic = suite.data.synthetic
    rows, bound = None, ""
    if source.source == "synthetic":
        rows = synthetic.n_sft if stage == "sft" else synthetic.n_pairs
    if source.max_examples:
        rows, bound = min(rows or source.max_examples, source.max_examples), f"data.{field_name}.max_examples"
    if rows is None:
        if cfg.max_steps:
            return cfg.max_steps, f"at most {stage}.max_steps: the size of {source.source} is not known before it is read"
        return None, (f"the size of {source.source} is not known before it is read: set data.{field_name}.max_examples "
                      f"or {stage}.max_steps")
    train = rows - max(1, round(rows * cfg.eval_fraction))
    ranks = suite.runtime.data_parallel_size
    per_pass = train // cfg.batch_size if ranks > 1 else -(-train // cfg.batch_size)
    steps = cfg.epochs * per_pass
    if cfg.max_steps and cfg.max_steps < steps:
        return cfg.max_steps, f"{stage}.max_steps"
    rows_text = f"at most {train} rows ({bound})" if bound else f"{train} rows"
    return steps, f"{cfg.epochs} x {per_pass} steps over {rows_text}"


def _differences(measured: Suite, target: Suite, stage: str) -> list[str]:
    """What differs between the measured run and the suite to estimate, beyond the batch sizes."""
    checks = {
        "model": (measured.models.policy, target.models.policy),
        "prompt + response length": (
            (measured.shared.max_prompt_length, measured.shared.max_response_length),
            (target.shared.max_prompt_length, target.shared.max_response_length)),
        "precision": (measured.shared.precision, target.shared.precision),
        "device": (measured.runtime.device, target.runtime.device),
        "ranks": (measured.runtime.data_parallel_size, target.runtime.data_parallel_size),
        "rollout backend": (measured.shared.rollout_backend, target.shared.rollout_backend),
    }
    if stage in algorithms.NAMES and algorithms.get(stage).online:
        checks["answers per prompt"] = (measured.samples_per_prompt(stage), target.samples_per_prompt(stage))
    return [f"{what} {a} measured, {b} here" for what, (a, b) in checks.items() if a != b]


def measured_throughput(folder: str | Path, target: Suite) -> dict[str, Throughput]:
    """Seconds per example of each stage complete in a results folder (results/<suite> of a run or a bench),
    its first seed; eval as seconds per evaluated checkpoint."""
    root = Path(folder)
    found: dict[str, Throughput] = {}
    for stage_dir in sorted(root.glob("*/seed*")):
        stage = stage_dir.parent.name
        if stage in found or not results.is_complete(stage_dir) or not (stage_dir / "summary.json").is_file():
            continue
        summary = results.read_json(stage_dir / "summary.json")
        manifest = results.read_json(stage_dir / "manifest.json")
        try:
            measured = Suite.model_validate(manifest["config"]["suite"])
        except (KeyError, TypeError, ValueError) as err:
            raise CostError(f"{stage_dir}/manifest.json: no readable suite config ({type(err).__name__})") from None
        where = f"measured: {stage_dir} ({manifest.get('device_name') or manifest.get('device', '?')})"
        wall = float(summary.get("wall_time_s") or 0.0)
        if stage == "eval":
            models = len(summary.get("rows") or []) or 1
            found[stage] = Throughput(wall / models, where + f", {wall:.0f} s for {models} checkpoints", caveats=(
                ["eval settings differ"] if measured.eval != target.eval else []))
            continue
        if stage not in algorithms.PREPARATION_STAGES and stage not in algorithms.NAMES:
            continue
        iterations, examples = int(summary.get("iterations") or 0), examples_per_iteration(measured, stage)
        if iterations < 1:
            continue
        per_iteration = summary.get("time_per_iteration_s")
        if per_iteration:
            fixed = max(0.0, wall - iterations * per_iteration)
            note = f", {per_iteration:.3g} s per iteration of {examples} examples + {fixed:.0f} s fixed"
        else:  # SFT records its wall time only: its fixed part is folded into each step
            per_iteration, fixed = wall / iterations, 0.0
            note = f", {wall:.0f} s wall for {iterations} iterations of {examples} examples (start-up included)"
        found[stage] = Throughput(per_iteration / examples, where + note, fixed, _differences(measured, target, stage))
    if not found:
        raise CostError(f"{root}: no complete stage with a summary.json (expected results/<suite>/<stage>/seed<k>/, "
                        "written by `remax-bench run` or `remax-bench bench`)")
    return found


def stated_throughput(suite: Suite) -> dict[str, Throughput]:
    stated = suite.runtime.throughput
    if stated is None:
        return {}
    return {stage: Throughput(seconds, f"stated in the suite (runtime.throughput): {stated.source}")
            for stage, seconds in stated.seconds_per_example.items()}


def stage_times(suite: Suite, measured: dict[str, Throughput] | None = None) -> list[StageTime]:
    """Every planned stage with its runs, iterations and seconds (None where no throughput is known)."""
    from remax_bench.runner import plan

    known = {**stated_throughput(suite), **(measured or {})}
    rows: dict[str, StageTime] = {}
    for item in plan(suite):
        if item.stage in rows:
            rows[item.stage].runs += 1
            continue
        row = rows[item.stage] = StageTime(item.stage, 1, throughput=known.get(item.stage))
        if item.given:
            row.seconds_per_run, row.given, row.note = 0.0, item.given, f"given: {item.given}"
            continue
        if item.stage == "eval":  # an "example" is an evaluated checkpoint, all in one pass
            row.iterations, row.examples = 1, evaluated_models(suite)[1]
            if row.throughput is None:
                row.note = "not estimated: give --measured, a run of this suite's eval (judge calls below)"
            else:
                row.seconds_per_run = row.throughput.seconds_per_example * row.examples
            continue
        if item.stage in algorithms.PREPARATION_STAGES:
            row.iterations, row.note = preparation_steps(suite, item.stage)
        else:
            row.iterations = suite.iterations
        row.examples = examples_per_iteration(suite, item.stage)
        missing = ([row.note] if row.iterations is None else []) + (
            [f"no seconds per example for {item.stage} (state runtime.throughput in the suite, or give --measured "
             "a results folder)"] if row.throughput is None else [])
        if missing:
            row.note = "not estimated: " + "; ".join(missing)
        else:
            t = row.throughput
            row.seconds_per_run = row.iterations * row.examples * t.seconds_per_example + t.fixed_s
    return list(rows.values())


# -- money -----------------------------------------------------------------------------------------
@dataclass
class JudgeCost:
    benchmark: str
    calls: int
    usd_per_call: float | None
    source: str

    @property
    def usd(self) -> float | None:
        return None if self.usd_per_call is None else self.calls * self.usd_per_call


def _alpaca_eval_dir() -> Path | None:
    """alpaca_eval's installed folder, found without importing it (its import takes seconds)."""
    spec = importlib.util.find_spec("alpaca_eval")
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def price_per_token(model: str) -> float | None:
    """alpaca_eval's per-token price of an OpenAI model (decoders/openai.py), which it charges for prompt and
    completion tokens alike; None for a model it does not price."""
    try:
        from alpaca_eval.decoders.openai import _get_price_per_token
    except ImportError:
        return None
    price = _get_price_per_token(model)
    return None if price is None or math.isnan(price) else float(price)


def alpaca_eval_price(annotator: str | None, model: str) -> tuple[float | None, str]:
    """($ per pairwise verdict, where it comes from) for alpaca_eval's annotator config pointed at ``model``."""
    if annotator is None:
        return None, "remax-bench's own pairwise prompt has no measured price (eval.alpaca_eval.annotator: null)"
    root = _alpaca_eval_dir()
    if root is None:
        return None, "alpaca_eval is not installed"
    import pandas as pd
    import yaml

    board = pd.read_csv(root / "leaderboards" / "evaluators" / "evaluators_leaderboard.csv", index_col=0)
    column = "Price [$/1000 examples]"
    if annotator not in board.index or pd.isna(board.loc[annotator, column]):
        return None, f"alpaca_eval's evaluators leaderboard has no price for {annotator}"
    per_example = float(board.loc[annotator, column]) / 1000
    source = (f"alpaca_eval's evaluators leaderboard: {annotator} measured at ${per_example * 1000:.2f} per 1000 "
              "examples")
    config = yaml.safe_load((root / "evaluators_configs" / annotator / "configs.yaml").read_text())
    config_model = next(iter(config.values())).get("completions_kwargs", {}).get("model_name")
    if config_model == model:
        return per_example, source
    ours, theirs = price_per_token(model), price_per_token(str(config_model))
    if ours is None or theirs is None:
        return None, f"{source} with {config_model}; alpaca_eval has no per-token price for {model}"
    return per_example * ours / theirs, f"{source} with {config_model}, rescaled to {model} by alpaca_eval's per-token prices"


def mt_bench_tokens(max_new_tokens: int) -> float:
    """Tokens of one question's two single-grading calls (prompt and reply), FastChat's prompts, on average
    over the questions: its template, the conversation so far (turn 2 repeats turn 1), answers and, for the
    reference-graded share, reference answers counted at ``max_new_tokens`` each."""
    total = 0.0
    for turn in (1, 2):
        plain, graded = (chars / CHARS_PER_TOKEN for chars in MT_TEMPLATE_CHARS[turn])
        template = (1 - MT_REFERENCE_SHARE) * plain + MT_REFERENCE_SHARE * graded
        conversation = turn * (MT_QUESTION_TOKENS + max_new_tokens + MT_REFERENCE_SHARE * max_new_tokens)
        total += template + conversation + MT_JUDGE_REPLY_TOKENS
    return total


def evaluated_models(suite: Suite) -> tuple[int, int]:
    """(policies judged against the reference in AlpacaEval, models graded in MT-bench) per eval stage, as
    ``evaluation.pipeline.run_eval_stage`` picks them: the SFT model and every algorithm's policy; a reference
    that is one of them is not judged against itself, one given as a checkpoint folder is graded too."""
    stages = ["sft", *suite.enabled_algorithms()]
    reference = suite.eval.reference
    if reference in stages:
        return len(stages) - 1, len(stages)
    outputs_file = Path(reference).suffix == ".json"
    return len(stages), len(stages) + (0 if outputs_file else 1)


def _seeds(n: int) -> str:
    return f"{n} seed" + ("s" if n != 1 else "")


def _counted(loader, *args) -> tuple[list | None, str]:
    try:
        return loader(*args), ""
    except Exception as err:  # noqa: BLE001 - an unreadable set is reported, not estimated
        return None, f"{type(err).__name__}: {err}"


def judge_costs(suite: Suite) -> tuple[list[JudgeCost], list[str]]:
    """(AlpacaEval's and MT-bench's calls and price over every eval stage, notes on the judge)."""
    ev = suite.eval
    if not ev.enabled:
        return [], ["eval is disabled: no judge calls"]
    from remax_bench.evaluation.data import alpaca_eval_instructions, mt_bench_questions

    seeds = len(suite.seeds)
    judged, graded = evaluated_models(suite)
    judge = ev.judge
    billed = judge.type == "openai"
    notes = [{"openai": f"judge: {judge.model} through an OpenAI-compatible API"
              + (f" at {judge.base_url} (priced at OpenAI's list price; that endpoint bills its own)" if judge.base_url else ""),
              "vllm_local": f"judge: {judge.model} served on this machine by vLLM: no API bill, its GPU time is not counted",
              "reward_model": "judge: a reward model on this machine: no API bill",
              "gold": "judge: the synthetic task's gold scorer: no API bill"}[judge.type]]
    out = []
    if ev.alpaca_eval.enabled:
        a = ev.alpaca_eval
        if a.prompts == "default":
            n = min(ALPACA_EVAL_SIZE, a.max_instances or ALPACA_EVAL_SIZE)
            how = f"{n} of AlpacaEval's {ALPACA_EVAL_SIZE} instructions"
        else:
            rows, error = _counted(alpaca_eval_instructions, a.prompts, a.max_instances, suite.data.synthetic)
            n = len(rows) if rows is not None else 0
            how = f"{n} instructions of {a.prompts!r}" if rows is not None else f"unreadable {a.prompts!r} ({error})"
        price, source = alpaca_eval_price(a.annotator, judge.model) if billed else (0.0, "")
        out.append(JudgeCost("AlpacaEval", n * judged * seeds, price,
                             f"{how} x {judged} policies x {_seeds(seeds)}" + (f"; {source}" if source else "")))
    if ev.mt_bench.enabled:
        m = ev.mt_bench
        if m.questions == "default":
            n = min(MT_BENCH_SIZE, m.max_questions or MT_BENCH_SIZE)
            turns, how = n * MT_BENCH_TURNS, f"{n} FastChat questions x {MT_BENCH_TURNS} turns"
        else:
            questions, error = _counted(mt_bench_questions, m.questions, m.max_questions, suite.data.synthetic)
            turns = sum(len(q["turns"]) for q in questions) if questions else 0
            how = f"{turns} turns of {m.questions!r}" if questions is not None else f"unreadable {m.questions!r} ({error})"
        price, source = 0.0, ""
        if billed:
            tokens = mt_bench_tokens(ev.generation.max_new_tokens) / MT_BENCH_TURNS
            per_token = price_per_token(judge.model)
            price = None if per_token is None else tokens * per_token
            source = (f"about {tokens:,.0f} tokens per verdict (FastChat's single-grading prompt, the conversation, "
                      f"answers at eval.generation.max_new_tokens = {ev.generation.max_new_tokens}, a "
                      f"{MT_JUDGE_REPLY_TOKENS}-token reply) at "
                      + (f"${per_token * 1000:.3g} per 1000 tokens (alpaca_eval's price for {judge.model})"
                         if per_token else f"no known price (alpaca_eval does not price {judge.model})"))
        out.append(JudgeCost("MT-bench", turns * graded * seeds, price,
                             f"{how} x {graded} models x {_seeds(seeds)}, single grading" + (f"; {source}" if source else "")))
    return out, notes


# -- the whole -------------------------------------------------------------------------------------
@dataclass
class CostEstimate:
    suite: Suite
    stages: list[StageTime]
    judge: list[JudgeCost]
    notes: list[str]

    @property
    def ranks(self) -> int:
        return self.suite.runtime.data_parallel_size

    @property
    def device_hours(self) -> float:
        return sum(s.seconds or 0.0 for s in self.stages) * self.ranks / 3600

    @property
    def judge_usd(self) -> float:
        return sum(j.usd or 0.0 for j in self.judge)


def estimate_cost(suite: Suite, measured: str | Path | None = None) -> CostEstimate:
    measured_figures = measured_throughput(measured, suite) if measured else None
    costs, notes = judge_costs(suite)
    return CostEstimate(suite, stage_times(suite, measured_figures), costs, notes)


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:.2f}"


def format_cost(cost: CostEstimate) -> str:
    suite, ranks = cost.suite, cost.ranks
    device = suite.runtime.device
    unit = "GPU-hours" if device == "cuda" else f"{device}-hours"
    lines = [f"Time and money of suite {suite.name!r}: {ranks} rank(s) on device {device!r}, seeds {suite.seeds}",
             "", f"{'stage':<13}{'runs':>5}{'iterations':>11}{'examples/it':>12}{'s/example':>11}{'hours':>8}"
             f"{unit:>11}", "-" * 71]
    sources: list[str] = []
    for s in cost.stages:
        spe = f"{s.throughput.seconds_per_example:.4g}" if s.throughput and s.seconds is not None else "-"
        device_h = None if s.seconds is None else s.seconds * ranks
        lines.append(f"{s.stage:<13}{s.runs:>5}{s.iterations if s.iterations is not None else '-':>11}"
                     f"{s.examples if s.examples is not None else '-':>12}{spe:>11}{_hours(s.seconds):>8}"
                     f"{_hours(device_h):>11}")
        if s.seconds is not None and s.throughput:
            sources.append(f"  {s.stage}: {s.throughput.source}" + (f" ({s.note})" if s.note else ""))
            sources += [f"    caveat: {c}" for c in s.throughput.caveats]
        elif s.note:
            sources.append(f"  {s.stage}: {s.note}")
    estimated = [s.stage for s in cost.stages if s.seconds is not None and not s.given]
    missing = [s.stage for s in cost.stages if s.seconds is None]
    if estimated:
        total = (f"{'total':<52}{_hours(sum(s.seconds or 0 for s in cost.stages)):>8}{cost.device_hours:>11.2f}"
                 + (f"  (without {', '.join(missing)})" if missing else ""))
    else:
        total = "total: no stage estimated"
    lines += ["-" * 71, total, "", "where the times come from:", *sources]
    lines += ["", *cost.notes]
    if cost.judge:
        lines += [f"{'benchmark':<13}{'calls':>9}{'$/call':>10}{'$':>10}", "-" * 42]
        for j in cost.judge:
            per = "-" if j.usd_per_call is None else f"{j.usd_per_call:.4f}"
            usd = "-" if j.usd is None else f"{j.usd:.2f}"
            lines.append(f"{j.benchmark:<13}{j.calls:>9,}{per:>10}{usd:>10}")
        unpriced = [j.benchmark for j in cost.judge if j.usd is None]
        lines += ["-" * 42, f"{'total':<32}{cost.judge_usd:>10.2f}" + (f"  (without {', '.join(unpriced)})" if unpriced else ""),
                  "", "where the calls and prices come from:", *(f"  {j.benchmark}: {j.source}" for j in cost.judge)]
    return "\n".join(lines)
