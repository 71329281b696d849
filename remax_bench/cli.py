"""The `remax-bench` command line."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from remax_bench import __version__
from remax_bench.core.algorithms import NAMES as ALGORITHM_NAMES
from remax_bench.core.algorithms import PREPARATION_STAGES

USAGE_ERROR = 2


def _fail(message: str, code: int = USAGE_ERROR):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _load(suite_arg: str, overrides=()):
    from remax_bench.core.config import SuiteError
    from remax_bench.core.suite_file import load_suite

    try:
        return load_suite(suite_arg, overrides)
    except SuiteError as err:
        given = f" with {' '.join('--set ' + o for o in overrides)}" if overrides else ""
        _fail(f"invalid suite {suite_arg}{given}:\n{err}")


def set_option(command):
    """``--set KEY=VALUE``, repeatable: any field of the suite, validated as the suite file is."""
    return click.option(
        "--set", "overrides", multiple=True, metavar="KEY=VALUE",
        help="set a field of the suite: a dotted path and a YAML value, e.g. --set shared.kl_coef=0.1 "
             "--set seeds=[0,1,2] (repeatable; recorded in every stage's manifest)")(command)


def tracker_option(command):
    """``--tracker NAME``, repeatable or comma-separated: the suite's runtime.trackers for this run."""
    return click.option(
        "--tracker", "tracker_names", multiple=True, metavar="NAME",
        help="log every stage live to tensorboard, wandb and/or mlflow (repeatable or comma-separated; 'none' for "
             "none); replaces the suite's runtime.trackers")(command)


def _with_trackers(overrides: tuple[str, ...], tracker_names: tuple[str, ...]) -> tuple[str, ...]:
    """--tracker as the --set override it stands for (runtime.trackers=[...]), after the others."""
    if not tracker_names:
        return overrides
    names = [n.strip() for text in tracker_names for n in text.split(",") if n.strip()]
    names = [] if names == ["none"] else names
    return (*overrides, f"runtime.trackers=[{', '.join(names)}]")


def _int_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"--seeds expects comma-separated integers like 0,1,2; got {text!r}")
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        _fail(f"--seeds expects distinct non-negative integers like 0,1,2; got {text!r}")
    return seeds


def _preflight(suite, stages: list[str] | None = None, results_dir: str | None = None) -> None:
    """Everything that can be checked before a stage starts; one line per problem, exit 2."""
    _refuse(suite, _run_problems(suite, stages, jobs=1, results_dir=results_dir))


def _refuse(suite, found: list[str]) -> None:
    if found:
        _fail(f"suite {suite.name!r} cannot run:\n" + "\n".join(f"  {p}" for p in found))


class LiveBoard:
    """One live display for every running stage. On a terminal each running stage keeps one progress line,
    redrawn in place below the messages; in a log file each stage's progress comes at most every 15 s."""

    def __init__(self):
        self.tty = sys.stdout.isatty()
        self.lines: dict[str, str] = {}  # stage key -> its latest progress line
        self.drawn = 0
        self.last_plain: dict[str, float] = {}

    def __call__(self, text: str) -> None:
        self._erase()
        click.echo(text)
        self._draw()

    def progress(self, text: str, key: str = "") -> None:
        """A running stage's progress (the runner calls this for its step lines)."""
        if not self.tty:
            if time.time() - self.last_plain.get(key, 0.0) >= 15:
                self.last_plain[key] = time.time()
                click.echo(text)
            return
        self.lines[key] = text
        self._erase()
        self._draw()

    def forget(self, key: str) -> None:
        """The stage ended: its line goes."""
        if self.lines.pop(key, None) is not None and self.tty:
            self._erase()
            self._draw()

    def _erase(self) -> None:
        if self.drawn:
            # Up to the block's first line, clear to the end (kept as written: click strips escapes it deems colour).
            click.echo(f"\x1b[{self.drawn}F\x1b[J", nl=False, color=True)
            self.drawn = 0

    def _draw(self) -> None:
        import shutil

        width = max(20, shutil.get_terminal_size().columns - 1)  # a wrapped line would break the redraw
        for text in self.lines.values():
            click.echo(text[:width])
        self.drawn = len(self.lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="remax-bench")
def main():
    """Matched PPO, DPO and ReMax trainings: what each RLHF algorithm costs and what it buys."""


@main.command()
@click.argument("suite")
@click.option("--table", is_flag=True,
              help="print the resolved hyperparameters per algorithm (as a paper's appendix lists them)")
@click.option("--config-only", is_flag=True,
              help="check the suite's fields only, not whether this machine can run it (files, models, GPU, keys): "
                   "for a suite written here to run on a GPU cluster")
@set_option
def validate(suite, table, config_only, overrides):
    """Check SUITE (a YAML path or a name in suites/) and print the resolved config."""
    from remax_bench.core.suite_file import to_yaml

    loaded = _load(suite, overrides)
    if not config_only:
        _preflight(loaded)
    if table:
        import pandas as pd

        from remax_bench.core.algorithms import hyperparameter_table

        click.echo(pd.DataFrame(hyperparameter_table(loaded)).to_string(index=False))
        for name, how in loaded.kl_departures().items():
            click.echo(f"not matched: {name} regularises with its own KL, {how}", err=True)
    else:
        click.echo(to_yaml(loaded))
    click.echo(f"# suite {loaded.name!r} is valid (config hash {loaded.config_hash()})", err=True)


def plan_options(command):
    """The options that pick a suite's stages and where their results are (run and status)."""
    for option in reversed([
        click.option("--only", help="comma-separated stages, of: "
                     + ", ".join((*PREPARATION_STAGES, *ALGORITHM_NAMES, "eval")) + " (those the suite plans)"),
        click.option("--seeds", help="comma-separated seeds, overriding the suite's"),
        click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False)),
    ]):
        command = option(command)
    return command


def _plan(loaded, only, seeds):
    from remax_bench.runner import plan

    try:
        return plan(loaded, _int_list(seeds), only.split(",") if only else None)
    except ValueError as err:
        _fail(str(err))


@main.command()
@click.argument("suite", default="tiny")
@plan_options
@click.option("--jobs", "-j", default=1, show_default=True, type=click.IntRange(min=1),
              help="stages run at once on this machine, each on its own GPUs (or its share of the CPU cores) and "
                   "master port; dependencies first (with runtime.executor slurm, Slurm decides)")
@click.option("--dry-run", is_flag=True,
              help="print the plan and the command of each stage, and what would stop a real run here; run nothing "
                   "(exit 0 whatever this machine lacks)")
@set_option
@tracker_option
def run(suite, only, seeds, results_dir, jobs, dry_run, overrides, tracker_names):
    """Run SUITE end to end: train, evaluate, and record every stage under RESULTS_DIR."""
    from remax_bench.core.trackers import describe
    from remax_bench.runner import Runner, exit_code, outcome_table

    overrides = _with_trackers(overrides, tracker_names)
    loaded = _load(suite, overrides)
    stages = _plan(loaded, only, seeds)
    planned = sorted({s.stage for s in stages})
    if not dry_run:
        _refuse(loaded, _run_problems(loaded, planned, jobs, results_dir))
    runner = Runner(loaded, results_dir, echo=LiveBoard(), overrides=overrides)
    where = " as Slurm jobs" if loaded.runtime.executor == "slurm" else f", {jobs} at once" if jobs > 1 else ""
    click.echo(f"suite {loaded.name!r}: {len(stages)} stages{where}, results in {runner.root}")
    for line in [f"--set {o}" for o in overrides] + describe(loaded.runtime.trackers, runner.root):
        click.echo(f"  {line}")
    outcomes = runner.run(stages, dry_run=dry_run, jobs=jobs)
    click.echo("\n" + outcome_table(outcomes))
    if dry_run:
        # A plan can be read on any machine; what this one lacks is listed, not fatal.
        found = _run_problems(loaded, planned, jobs)
        click.echo(f"\nwhat would stop a real run here ({len(found)}):" if found
                   else "\nnothing found that would stop a real run here")
        for line in found:
            click.echo(f"  {line}")
        return
    if any(o.status == "submitted" for o in outcomes):
        click.echo(f"\nthe submitted jobs go on in Slurm: `remax-bench status {suite}` shows them, `run` again "
                   "follows them, scancel stops them")
    sys.exit(exit_code(runner, outcomes))


def _run_problems(suite, planned: list[str] | None, jobs: int, results_dir: str | None = None) -> list[str]:
    """Everything that can be checked before a stage starts: the suite's inputs, this machine's devices for
    --jobs, and the Slurm cluster with runtime.executor slurm."""
    from remax_bench import devices
    from remax_bench.preflight import problems

    found = problems(suite, planned, results_dir) + devices.problems(suite.runtime, planned or list(PREPARATION_STAGES), jobs)
    if suite.runtime.executor == "slurm":
        from remax_bench.slurm import problems as slurm_problems

        found += slurm_problems(suite.runtime)
    return found


@main.command()
@click.argument("suite", default="tiny")
@plan_options
@set_option
def status(suite, only, seeds, results_dir, overrides):
    """Each stage of SUITE: complete, failed, partial or missing under RESULTS_DIR, and its Slurm job (id, state,
    reason) where `run` submitted one."""
    from remax_bench.runner import Runner
    from remax_bench.status import stage_states, status_table

    loaded = _load(suite, overrides)
    runner = Runner(loaded, results_dir, overrides=overrides)
    click.echo(status_table(stage_states(runner, _plan(loaded, only, seeds))))


@main.command()
@click.argument("results_dir", default="results", type=click.Path(file_okay=False))
@click.option("--suite", "suite_name", help="which suite under RESULTS_DIR (default: every suite found)")
@click.option("--out", "reports_dir", default="reports", show_default=True, type=click.Path(file_okay=False))
def report(results_dir, suite_name, reports_dir):
    """Turn RESULTS_DIR into reports/<suite>/: summary tables, plots and index.html."""
    from remax_bench.report import ReportError, write_report

    root = Path(results_dir)
    names = [suite_name] if suite_name else sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not names:
        _fail(f"no results found in {root}/ (run `remax-bench run SUITE` first)")
    for name in names:
        try:
            index = write_report(root, reports_dir, name)
        except ReportError as err:
            _fail(f"{name}: {err}", code=1)
        click.echo(f"report for {name}: {index}")


@main.command()
@click.option("--model", default="tiny:25m", show_default=True,
              help="a tiny: spec (CPU: up to tiny:100m) or any HF id / local path (GPU)")
@click.option("--iterations", "-n", default=5, show_default=True, type=click.IntRange(min=2))
@click.option("--suite", "suite_arg", default="tiny", show_default=True, help="suite whose shared block is used")
@click.option("--algorithms", default=",".join(ALGORITHM_NAMES), show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="override the suite's runtime.device")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None,
              help="override shared.gradient_checkpointing (the paper trains with it on)")
@click.option("--rollout-backend", "rollout_backend", default=None,
              help="hf, vllm or hf,vllm (each algorithm once per backend); default: the suite's shared.rollout_backend")
@click.option("--against", type=click.Choice(["trl"]), default=None,
              help="also run TRL's own trainers (GRPO, RLOO, DPO) on the same work and print the side-by-side table")
@click.option("--profile", is_flag=True, help="run every stage under torch's profiler and print where each phase's "
              "time goes (operator self time; slower, so its times are not the benchmark's)")
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False))
@set_option
@tracker_option
def bench(model, iterations, suite_arg, algorithms, device, gradient_checkpointing, rollout_backend, against, profile,
          results_dir, overrides, tracker_names):
    """Every algorithm on the same model and shared settings: peak memory, time per iteration, tokens/s."""
    from transformers.utils import logging as hf_logging

    from remax_bench.bench import BENCH_ALGORITHMS, format_bench, run_bench

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    chosen = [a.strip() for a in algorithms.split(",") if a.strip()]
    unknown = set(chosen) - set(BENCH_ALGORITHMS)
    if unknown:
        _fail(f"--algorithms: unknown {sorted(unknown)}; choose from {list(BENCH_ALGORITHMS)}")
    backends = None
    if rollout_backend:
        backends = tuple(b.strip() for b in rollout_backend.split(",") if b.strip())
        if not backends or set(backends) - {"hf", "vllm"} or len(set(backends)) != len(backends):
            _fail(f"--rollout-backend expects hf, vllm or hf,vllm; got {rollout_backend!r}")
    if against:
        from remax_bench.peers.against import missing

        problem = missing(against)
        if problem:
            _fail(problem)
        if backends and "hf" not in backends:
            _fail(f"--against {against} compares transformers rollouts (TRL's generate): add hf to --rollout-backend")
    overrides = _with_trackers(overrides, tracker_names)
    suite = _load(suite_arg, overrides)
    from remax_bench.core.trackers import missing_packages

    _refuse(suite, missing_packages(suite.runtime.trackers))
    if profile:
        import os

        from remax_bench.core.profiling import PROFILE_ENV

        os.environ[PROFILE_ENV] = "1"  # every stage process inherits it
    if backends and "vllm" in backends:
        from remax_bench.bench import bench_suite

        # The run's own checks of shared.rollout_backend (vllm installed, a GPU for its CUDA build).
        _preflight(bench_suite(suite, model, iterations, device, gradient_checkpointing, "vllm"), chosen)
    table = run_bench(suite, model, iterations, results_dir, chosen, device, echo=LiveBoard(),
                      gradient_checkpointing=gradient_checkpointing, rollout_backends=backends, overrides=overrides)
    click.echo()
    click.echo(format_bench(table, model))
    failed = len(table) < len(chosen)
    if against and failed:
        click.echo(f"\nagainst {against}: not run, since not every algorithm of ours finished (an interrupted or "
                   "failed stage above)")
    elif against:
        from remax_bench.core.algorithms import with_trl_trainer
        from remax_bench.peers.against import format_against, run_against

        peers = run_against(against, suite, model, iterations, results_dir, chosen, device, echo=LiveBoard(),
                            gradient_checkpointing=gradient_checkpointing, overrides=overrides)
        click.echo()
        click.echo(format_against(table, peers, against))
        failed = len(peers) < len(with_trl_trainer(chosen))
    if profile:
        from remax_bench.bench import format_profiles, profiled_stages

        click.echo()
        click.echo(format_profiles(profiled_stages(suite, model, iterations, results_dir, chosen, device,
                                                   gradient_checkpointing, against)))
    if failed:
        sys.exit(1)


@main.command()
@click.argument("results_dir", default="results/tiny", type=click.Path(file_okay=False))
@click.option("--baseline", "baseline_path", default=None,
              help="baseline JSON (default: suites/baselines/<suite>.json, shipped with remax-bench)")
@click.option("--update-baseline", is_flag=True, help="rewrite the baseline's values from these results")
@click.option("--reproduce/--no-reproduce", default=True, show_default=True,
              help="retrain ReMax for its first 3 iterations from its recorded config (same inputs and seed, in a "
                   "temporary folder) and require the recorded figures; --no-reproduce skips that training")
def check(results_dir, baseline_path, update_baseline, reproduce):
    """Compare a finished suite (RESULTS_DIR = results/<suite>) with a baseline; exit 1 on any regression.

    By default it also retrains ReMax for its first 3 iterations to test that a run reproduces
    (--no-reproduce skips that)."""
    from remax_bench.check import CheckError, format_rows, run_check

    try:
        rows, notes = run_check(results_dir, baseline_path, update_baseline=update_baseline,
                               reproduce_rule=reproduce)
    except CheckError as err:
        _fail(str(err), code=err.code)
    for note in notes:
        click.echo(note, err=note.startswith("warning"))
    click.echo(format_rows(rows))
    failed = [r.name for r in rows if not r.passed]
    click.echo(f"\n{len(rows) - len(failed)} of {len(rows)} checks passed" + (f"; failing: {failed}" if failed else ""))
    if failed:
        sys.exit(1)


@main.command()
@click.argument("suite")
@click.option("--checkpoint", help="the policy to measure (default: the suite's SFT checkpoint in RESULTS_DIR)")
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--answers", default=32, show_default=True, type=click.IntRange(min=3),
              help="generated answers per batch, the same for every estimator (greedy ones included)")
@click.option("--k", default=4, show_default=True, type=click.IntRange(min=2), help="answers per prompt of the "
              "group estimators")
@click.option("--repeats", default=16, show_default=True, type=click.IntRange(min=2), help="batches per estimator")
@click.option("--reward", help="gold or pkg.module:function (default: shared.reward_function, else gold)")
@click.option("--seed", default=0, show_default=True, type=int)
def variance(suite, checkpoint, results_dir, answers, k, repeats, reward, seed):
    """Variance of the policy-gradient estimate under no baseline, ReMax's greedy baseline, the group mean,
    GRPO and RLOO, at equal generated answers; writes RESULTS_DIR/<suite>/variance/ (the report shows it)."""
    from remax_bench.core.rewards import RewardFunctionError
    from remax_bench.variance import run_variance

    loaded = _load(suite)
    if checkpoint is None:
        sft = Path(results_dir) / loaded.name / "sft" / f"seed{loaded.seeds[0]}" / "checkpoint"
        checkpoint = loaded.sft.path or str(sft)
        if not Path(checkpoint).exists():
            _fail(f"no SFT checkpoint at {checkpoint}: run `remax-bench run {suite} --only sft` first, or give "
                  "--checkpoint (a policy directory or a tiny: spec)")
    if answers < k + 1:
        _fail(f"--answers must be at least --k + 1 = {k + 1} (one group and its greedy answer), got {answers}")
    try:
        record = run_variance(loaded, checkpoint, Path(results_dir) / loaded.name / "variance", answers=answers,
                              k=k, repeats=repeats, reward=reward, seed=seed, echo=click.echo)
    except RewardFunctionError as err:
        _fail(f"--reward: {err}")
    from remax_bench.variance import variance_markdown

    click.echo("\n".join(variance_markdown(record)))
    click.echo(f"written to {Path(results_dir) / loaded.name / 'variance'}/ (remax-bench report shows it)")


@main.command("estimate")
@click.option("--model", help="policy: tiny: spec, known name (Llama-2-7b, Mistral-7B, ...), raw size (7b), "
              "local dir or HF id; default: the suite's models.policy, else Llama-2-7b")
@click.option("--reward-model", "reward", help="reward model / critic shape (default: the suite's, else the policy)")
@click.option("--suite", help="take lengths, batch sizes, precision and ZeRO settings from this suite")
@click.option("--paper", is_flag=True, help="the ReMax paper's Llama-2-7B setup (see paper_inputs)")
@click.option("--algorithms", default=",".join(ALGORITHM_NAMES), show_default=True)
@click.option("--prompt-length", type=int)
@click.option("--response-length", type=int)
@click.option("--batch", type=int, help="rollout and train batch per GPU")
@click.option("--precision", type=click.Choice(["bf16", "fp32"]))
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None)
@click.option("--zero-stage", type=click.IntRange(0, 3))
@click.option("--num-gpus", type=click.IntRange(min=1))
@click.option("--offload-optimizer/--no-offload-optimizer", default=None)
@click.option("--offload-params/--no-offload-params", default=None)
@click.option("--frozen-zero3/--no-frozen-zero3", default=None, help="ZeRO-3 shard the reference and reward models")
@click.option("--offload-frozen/--no-offload-frozen", default=None)
@click.option("--greedy-sequential", is_flag=True, help="ReMax: greedy decoding after sampling, not in one batch")
@click.option("--flash-attention", is_flag=True, help="no s x s attention scores stored")
@click.option("--peak", type=click.Choice(["phased", "sum"]))
@click.option("--rollout-backend", "rollout_backend", type=click.Choice(["hf", "vllm"]),
              help="vllm: each rank's colocated engine, its weights and KV cache (in the generate phase on GPUs, where "
                   "it sleeps between rollouts; resident on the CPU build) (default: the suite's, else hf)")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="also write the component table as CSV")
@click.option("--measured", type=click.Path(exists=True, file_okay=False),
              help="with --suite: take each stage's time per example from this finished run or `remax-bench bench` "
                   "folder (results/<name>) instead of the suite's runtime.throughput")
def estimate(model, reward, suite, paper, algorithms, prompt_length, response_length, batch, precision,
                 gradient_checkpointing, zero_stage, num_gpus, offload_optimizer, offload_params, frozen_zero3,
                 offload_frozen, greedy_sequential, flash_attention, peak, rollout_backend, csv_path, measured):
    """Analytical GPU memory per algorithm and component (bytes per GPU), and ReMax's saving against PPO.
    With --suite, also the run's time (hours per stage, GPU-hours) and its judge's calls and price, each
    figure with its source."""
    from remax_bench.estimate import EstimateError, EstimateInputs, estimate_table, format_estimate, paper_inputs

    if measured and not suite:
        raise click.UsageError("--measured needs --suite (the suite whose run it prices)")

    overrides = {k: v for k, v in dict(
        prompt_length=prompt_length, response_length=response_length, rollout_batch_per_gpu=batch,
        train_batch_per_gpu=batch, precision=precision, gradient_checkpointing=gradient_checkpointing,
        zero_stage=zero_stage, num_gpus=num_gpus, offload_optimizer=offload_optimizer, offload_params=offload_params,
        frozen_zero3=frozen_zero3, offload_frozen=offload_frozen, peak=peak,
        rollout_backend=rollout_backend).items() if v is not None}
    if greedy_sequential:
        overrides["remax_greedy_batched"] = False
    if flash_attention:
        overrides["flash_attention"] = True
    try:
        if suite:
            loaded = _load(suite)
            if any(k in overrides for k in ("zero_stage", "num_gpus", "offload_optimizer", "offload_params")):
                overrides["engine"] = "deepspeed"  # asking for ZeRO settings means a DeepSpeed run
            inputs = EstimateInputs.from_suite(loaded, **overrides)
            model = model or loaded.models.policy
            reward = reward or getattr(loaded.models, "reward", None)
        else:
            inputs = paper_inputs(**overrides) if paper else EstimateInputs(**overrides)
            model = model or "Llama-2-7b"
        chosen = [a.strip() for a in algorithms.split(",") if a.strip()]
        click.echo(format_estimate(model, inputs, chosen, reward))
        if csv_path:
            estimate_table(model, inputs, chosen, reward).to_csv(csv_path, index=False)
            click.echo(f"\ncomponent table written to {csv_path}")
    except EstimateError as err:
        if not suite:
            raise click.UsageError(str(err)) from err
        click.echo(f"memory not estimated: {err}", err=True)  # the time and money below need no model shape
    if suite:
        from remax_bench.cost import CostError, estimate_cost, format_cost

        try:
            click.echo("\n" + format_cost(estimate_cost(loaded, measured)))
        except CostError as err:
            _fail(f"--measured: {err}")

if __name__ == "__main__":
    main()
