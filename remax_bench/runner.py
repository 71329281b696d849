"""`remax-bench run`: plan the stage graph of a suite and run each stage in its own process.

```
sft ──> reward_model ──┬──> ppo   ─┐
   └───────────────────┼──> remax ─┼──> eval
                       └──> dpo   ─┘   (dpo needs the SFT model and preference data only)
```

Every registered algorithm a suite enables gets its stage (REINFORCE, GRPO, RLOO and REINFORCE++ sit beside
ReMax). With ``shared.reward_function`` the online algorithms score answers with that function, so only a
critic (PPO's) or a reward-model judge still needs the reward_model stage.

SFT and the reward model are trained once (with the first seed): every algorithm then starts from the very
same policy and optimises the very same reward, which is what makes the comparison matched. PPO, ReMax, DPO
and eval run once per seed, and once per value of a sweep (core/sweep.py: ``<stage>@kl_coef=0.1/seed0``); the
preparation stages are shared by every value of a sweep over a field they do not read.

A stage's identity is the suite fields it reads and its inputs' identities (remax_bench.core.identity): a
re-run after editing an algorithm's field keeps SFT and the reward model, and one after editing an SFT field
redoes everything downstream of it.

Each stage is a subprocess (``python -m trainers.<stage>``, or the ``deepspeed`` launcher when the suite asks
for several GPUs), so its peak memory is its own and a crash takes down one stage only. A stage writes into
a partial directory and renames it when done; a re-run skips complete stages whose config is unchanged, resumes
an interrupted or failed one from its newest checkpoint of the same config, and redoes everything else.

SIGTERM and SIGUSR1 sent to the runner reach every process of the running stage as SIGUSR1 (the stage's process
group; the deepspeed launcher ignores it, every rank takes it): the stage writes a checkpoint at the end of its
iteration and exits resumable, and the runner stops with the same exit code (the contract is in
remax_bench/core/stage.py). Ctrl-C stops the stage at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from remax_bench.core import algorithms, checkpoint, results, sweep
from remax_bench.core.config import Suite
from remax_bench.core.identity import identity_view, stage_identity
from remax_bench.core.stage import EXIT_COMPLETED, EXIT_FAILED, EXIT_RESUMABLE, STOP_SIGNALS

# The module each stage runs as (``python -m <module>``); every one ends in remax_bench.core.stage.stage_main.
STAGE_MODULES = {"sft": "trainers.sft", "reward_model": "trainers.reward_model",
                 **{a.name: a.module for a in algorithms.REGISTRY.values()}, "eval": "remax_bench.evaluation.stage"}


def stage_module(stage: str) -> str:
    try:
        return STAGE_MODULES[stage]
    except KeyError:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGE_MODULES)}") from None


@dataclass
class StagePlan:
    stage: str
    seed: int
    needs: list[str] = field(default_factory=list)  # keys of the stages this one reads
    given: str | None = None  # a checkpoint given in the suite instead of training this stage
    runs_as: str | None = None  # another module than the stage's own (bench --against: a peer library's trainer)
    variant: str = ""  # the sweep value this stage runs ("" outside a sweep, or shared by every value)
    suite: Suite | None = None  # the concrete suite it runs (a sweep's variant); None: the runner's suite

    @property
    def dirname(self) -> str:
        return results.stage_dirname(self.stage, self.variant)

    @property
    def key(self) -> str:
        return f"{self.dirname}/seed{self.seed}"

    @property
    def module(self) -> str:
        return self.runs_as or stage_module(self.stage)


@dataclass
class Outcome:
    key: str
    status: str  # completed | skipped (already complete) | given | failed | blocked | interrupted | planned
    seconds: float = 0.0
    detail: str = ""


def plan(suite: Suite, seeds: list[int] | None = None, only: list[str] | None = None) -> list[StagePlan]:
    """The stages to run, in dependency order: those of every value of the suite's sweep, each stage shared by
    several values once."""
    seeds = list(seeds if seeds is not None else suite.seeds)
    planned: dict[str, StagePlan] = {}
    for variant in sweep.variants(suite):
        for item in variant_plan(variant, seeds):
            planned.setdefault(item.key, item)
    stages = list(planned.values())
    if only:
        unknown = set(only) - {s.stage for s in stages}
        if unknown:
            raise ValueError(f"--only names stages not in this suite's plan: {sorted(unknown)}; "
                             f"the plan has {sorted({s.stage for s in stages})}")
        stages = [s for s in stages if s.stage in only]
    return stages


def variant_plan(variant: sweep.Variant, seeds: list[int]) -> list[StagePlan]:
    """The stages of one concrete suite (one value of a sweep), in dependency order."""
    suite, label = variant.suite, variant.label
    prep = "" if variant.shares_preparation else label  # shared by every value unless they read the swept field
    prep_seed = seeds[0]
    sft, reward_model = f"{results.stage_dirname('sft', prep)}/seed{prep_seed}", \
        f"{results.stage_dirname('reward_model', prep)}/seed{prep_seed}"
    enabled = suite.enabled_algorithms()
    stages = [StagePlan("sft", prep_seed, given=suite.sft.path, variant=prep, suite=suite)]
    if suite.needs_reward_model_stage():
        stages.append(StagePlan("reward_model", prep_seed, needs=[sft], given=suite.reward_model.path, variant=prep,
                                suite=suite))
    for seed in seeds:
        algorithm_stages = [algorithm_stage(name, seed, prep_seed, suite.shared.reward_function, label, prep, suite)
                            for name in enabled]
        stages += algorithm_stages
        if suite.eval.enabled:
            needs = [sft] + [a.key for a in algorithm_stages]
            if suite.eval.judge.type == "reward_model":
                needs.append(reward_model)
            stages.append(StagePlan("eval", seed, needs=needs, variant=label, suite=suite))
    return stages


def algorithm_stage(name: str, seed: int, prep_seed: int, reward_function: str | None = None, variant: str = "",
                    prep_variant: str = "", suite: Suite | None = None) -> StagePlan:
    """One algorithm's stage: it starts from the SFT model and, if it optimises one (or starts a critic from
    it), the reward model; with shared.reward_function the online algorithms score with that instead."""
    needs = [f"{results.stage_dirname('sft', prep_variant)}/seed{prep_seed}"]
    if algorithms.needs_reward_model_stage(name, reward_function):
        needs.append(f"{results.stage_dirname('reward_model', prep_variant)}/seed{prep_seed}")
    return StagePlan(name, seed, needs=needs, variant=variant, suite=suite)


class Runner:
    def __init__(self, suite: Suite, results_dir: str | Path = "results", echo=print, overrides=()):
        self.suite = suite
        self.root = Path(results_dir) / suite.name
        self.echo = echo
        self.python = sys.executable
        self.overrides = list(overrides)  # the --set KEY=VALUE that made `suite` from its file, for the manifests
        self.stopped_by: str | None = None  # the stop signal this runner was sent, once it was
        self.process: subprocess.Popen | None = None  # the running stage (its process group's leader)

    # -- paths and configs ----------------------------------------------------------------------
    def final_dir(self, key: str) -> Path:
        stage, seed = key.split("/seed")
        return results.stage_dir(self.root.parent, self.suite.name, stage, int(seed))

    def checkpoint_of(self, key: str, plans: dict[str, StagePlan]) -> str:
        """A given checkpoint as written; a trained one relative to the suite's results folder, so that the
        stage's config (and hash) is the same wherever the folder sits or however its path is spelled."""
        plan_ = plans.get(key)
        if plan_ is not None and plan_.given:
            return plan_.given
        return str(self.final_dir(key).relative_to(self.root) / "checkpoint")

    def identity_of(self, key: str, plans: dict[str, StagePlan]) -> str | None:
        """What an input is, not where it is: the identity of the stage that trained it (None while it has no
        complete result)."""
        plan_ = plans.get(key)
        if plan_ is not None and plan_.given:
            return f"given:{plan_.given}"
        final = self.final_dir(key)
        if not results.is_complete(final):
            return None
        # The identity the result was recorded under, which the stages built on it recorded in their input_ids.
        return results.read_json(final / "manifest.json").get("config_hash")

    def suite_of(self, item: StagePlan) -> Suite:
        """The concrete suite a stage runs: its sweep value's, else the runner's."""
        return item.suite if item.suite is not None else self.suite

    def stage_config(self, item: StagePlan, plans: dict[str, StagePlan]) -> dict:
        inputs: dict = {}
        for need in item.needs:
            stage = results.split_stage_dirname(need.split("/")[0])[0]
            if item.stage == "eval":
                inputs.setdefault("checkpoints", {})
                if stage == "reward_model":
                    inputs["reward_model"] = self.checkpoint_of(need, plans)
                else:
                    inputs["checkpoints"][stage] = self.checkpoint_of(need, plans)
            else:
                inputs[stage] = self.checkpoint_of(need, plans)
        return {"stage": item.stage, "seed": item.seed, "suite": self.suite_of(item).resolved(), "inputs": inputs,
                "input_ids": {need: self.identity_of(need, plans) for need in item.needs},
                "overrides": self.overrides}

    def config_path(self, item: StagePlan) -> Path:
        return self.root / ".configs" / f"{item.dirname}-seed{item.seed}.json"

    def log_path(self, item: StagePlan) -> Path:
        return self.root / "logs" / f"{item.dirname}-seed{item.seed}.log"

    def command(self, item: StagePlan) -> list[str]:
        out = str(self.final_dir(item.key))
        runtime = self.suite.runtime
        if runtime.deepspeed.enabled and (runtime.num_gpus > 1 or runtime.num_nodes > 1) and item.stage != "eval":
            from remax_bench.core.deepspeed_config import launch_command

            return launch_command(item.module, str(self.config_path(item)), out, runtime)
        return [self.python, "-m", item.module, "--config", str(self.config_path(item)), "--out", out]

    # -- running ---------------------------------------------------------------------------------
    def why_run(self, item: StagePlan, config: dict, rerun: set[str] = frozenset()) -> str | None:
        """None when the stage's complete result matches its config and inputs; else why it must run (and from
        which iteration, where a checkpoint of this config lets it resume)."""
        final = self.final_dir(item.key)
        resume = self.resume_point(item, config) if not rerun & set(item.needs) else None
        resuming = f"will resume from iteration {resume}" if resume is not None else None
        if results.is_complete(final):
            # Both identities computed here from the configs themselves (not the hash the manifest recorded), so
            # a result is kept when no field its stage reads changed, whichever version wrote its manifest.
            old = results.read_json(final / "manifest.json").get("config") or {}
            if old and not rerun & set(item.needs) and stage_identity(old) == stage_identity(config):
                return None
            changed_inputs = [n for n in item.needs
                              if n in rerun or (old.get("input_ids") or {}).get(n) != config["input_ids"].get(n)]
            if changed_inputs:
                reason = f"input changed: {', '.join(changed_inputs)}"
            else:
                fields = _changed_fields(identity_view(old) if old else {}, identity_view(config), "")
                fields = [f.removeprefix("suite.") for f in fields] or ["stage identity"]
                reason = f"config changed: {', '.join(fields[:5])}{' ...' if len(fields) > 5 else ''}"
            return f"{reason}; {resuming}" if resuming else reason
        if results.partial_dir(final).exists():
            return f"partial: an interrupted attempt, {resuming or 'redone from the start'}"
        if results.failed_dir(final).exists():
            return f"failed: the last attempt failed{'; ' + resuming if resuming else ''}"
        return f"interrupted: {resuming}" if resuming else "missing"

    def resume_point(self, item: StagePlan, config: dict) -> int | None:
        """The iteration the stage's newest checkpoint of this config holds (None: none, it starts over)."""
        return checkpoint.newest_of_config(results.checkpoints_dir(self.final_dir(item.key)),
                                           checkpoint.config_identity(config))

    def run(self, stages: list[StagePlan], dry_run: bool = False) -> list[Outcome]:
        with self._taking_stop_signals():
            return self._run(stages, dry_run)

    def _run(self, stages: list[StagePlan], dry_run: bool) -> list[Outcome]:
        plans = {s.key: s for s in stages}
        outcomes: dict[str, Outcome] = {}
        total = len(stages)
        will_run: set[str] = set()
        for index, item in enumerate(stages, 1):
            label = f"[{index}/{total}] {item.key}"
            if item.given:
                outcomes[item.key] = Outcome(item.key, "given", detail=item.given)
                self.echo(f"{label}: using the given checkpoint {item.given}")
                continue
            config = self.stage_config(item, plans)
            if dry_run:
                reason = self.why_run(item, config, will_run)
                if reason is None:
                    self.echo(f"{label}: complete")
                    outcomes[item.key] = Outcome(item.key, "complete")
                else:
                    will_run.add(item.key)
                    after = f" after {', '.join(item.needs)}" if item.needs else ""
                    self.echo(f"{label}: will run ({reason}){after}\n    {' '.join(self.command(item))}")
                    outcomes[item.key] = Outcome(item.key, "planned", detail=reason)
                continue
            blocked = [n for n in item.needs if n in outcomes and outcomes[n].status not in ("completed", "skipped", "given")]
            missing = [n for n in item.needs if n not in outcomes and not results.is_complete(self.final_dir(n))]
            if blocked or missing:
                why = ", ".join(blocked + [f"{m} (no result; run it first)" for m in missing])
                outcomes[item.key] = Outcome(item.key, "blocked", detail=f"needs {why}")
                self.echo(f"{label}: blocked, needs {why}")
                continue
            reason = self.why_run(item, config)
            if reason is None:
                outcomes[item.key] = Outcome(item.key, "skipped", detail="already complete")
                self.echo(f"{label}: already complete, skipped")
                continue
            if self.stopped_by:
                self.echo(f"{self.stopped_by}: stopping before {item.key}; run the same command again to go on")
                break
            self.echo(f"{label}: will run ({reason})")
            outcome = self.run_stage(item, config, label)
            outcomes[item.key] = outcome
            if outcome.status == "interrupted" or self.stopped_by:
                self.echo("interrupted: stopping here; run the same command again to resume")
                break
        return [outcomes.get(s.key, Outcome(s.key, "not run")) for s in stages]

    def run_stage(self, item: StagePlan, config: dict, label: str) -> Outcome:
        config_path = self.config_path(item)
        config_path.parent.mkdir(parents=True, exist_ok=True)
        results.write_json(config_path, config)
        log_path = self.log_path(item)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        expected = self.expected_steps(item)
        start = time.time()
        self.echo(f"{label}: running (log: {log_path})")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
               RUNNER_PID_ENV: str(os.getpid())}
        # Line-buffered: each line the stage prints is in the log at once, so a log survives a runner or stage
        # killed by SIGKILL (a block buffer would die with the runner, and `tail -f` would show nothing).
        with open(log_path, "w", buffering=1) as log:
            # Its own process group, so that a stop reaches the launcher and every rank it started, and only them.
            process = subprocess.Popen(
                self.command(item), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1,
                preexec_fn=_die_with_parent, start_new_session=True,
            )
            self.process = process
            if self.stopped_by:
                _signal_group(process, signal.SIGUSR1)
            try:
                for line in process.stdout:
                    log.write(line)
                    if self.stopped_by:  # again: a stage still importing ignores SIGUSR1 until it takes it
                        _signal_group(process, signal.SIGUSR1)
                    progress = results.parse_progress(line)
                    if progress:
                        self.show_progress(label, progress[1], expected, progress[2], time.time() - start)
                    elif line.startswith(SHOWN_LINES):
                        self.echo(f"    {line.rstrip()}")
                code = process.wait()
            except KeyboardInterrupt:
                # Ctrl-C: the stage stops at once (a re-run resumes from its last checkpoint).
                _signal_group(process, signal.SIGINT)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    _signal_group(process, signal.SIGKILL)
                self.stopped_by = "SIGINT"
                return Outcome(item.key, "interrupted", time.time() - start, "Ctrl-C: " + self._resumes_from(item, config))
            finally:
                self.process = None
        seconds = time.time() - start
        final = self.final_dir(item.key)
        if code == EXIT_RESUMABLE:
            return Outcome(item.key, "interrupted", seconds,
                           f"stopped by {self.stopped_by or 'a signal'}: {self._resumes_from(item, config)}")
        if code == EXIT_COMPLETED and results.is_complete(final):
            (final / "stage.log").write_text(log_path.read_text())
            results.discard(results.failed_dir(final))  # an earlier failure is no longer this stage's state
            self.echo(f"{label}: completed in {seconds:.1f}s")
            return Outcome(item.key, "completed", seconds)
        detail = self.failure_reason(log_path, code)
        self.echo(f"{label}: FAILED after {seconds:.1f}s: {detail} (log: {log_path})")
        return Outcome(item.key, "failed", seconds, detail)

    def _resumes_from(self, item: StagePlan, config: dict) -> str:
        resume = self.resume_point(item, config)
        return f"a re-run resumes from iteration {resume}" if resume is not None else "no checkpoint, a re-run starts over"

    @contextmanager
    def _taking_stop_signals(self):
        """SIGTERM and SIGUSR1 to the runner stop the run: no stage starts after them, and the running one gets
        SIGUSR1 in its whole process group, so every rank checkpoints at the end of its iteration and exits
        resumable (the deepspeed launcher, which would end its ranks on SIGTERM, ignores SIGUSR1). Only the main
        thread can take signals; elsewhere they keep their default action."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def forward(signum, frame):
            self.stopped_by = signal.Signals(signum).name
            if self.process is not None:
                _signal_group(self.process, signal.SIGUSR1)

        previous = {signum: signal.signal(signum, forward) for signum in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def expected_steps(self, item: StagePlan) -> int | None:
        if item.stage in algorithms.REGISTRY:
            return self.suite_of(item).iterations
        return None

    def show_progress(self, label: str, step: int, expected: int | None, figures: str, elapsed: float) -> None:
        try:
            shown = json.loads(figures)
        except json.JSONDecodeError:
            shown = {}
        keys = [k for k in ("reward_mean", "kl", "loss", "accuracy", "eval_loss") if k in shown]
        text = " ".join(f"{k}={shown[k]:.3f}" for k in keys)
        eta = ""
        if expected and step > 0:
            eta = f" ETA {max(0.0, elapsed / step * (expected - step)):.0f}s"
            step_text = f"step {step}/{expected}"
        else:
            step_text = f"step {step}"
        show = getattr(self.echo, "progress", self.echo)  # a live display may redraw one line for these
        show(f"    {label} {step_text} {text}{eta}")

    @staticmethod
    def failure_reason(log_path: Path, code: int) -> str:
        errors = [text.strip() for text in log_path.read_text().splitlines() if text.startswith("[error]")]
        if errors:
            return errors[0].removeprefix("[error]").strip()
        if code < 0:
            return f"killed by signal {-code}"
        tail = log_path.read_text().strip().splitlines()[-1:] or ["no output"]
        return f"exit code {code}: {tail[0][:200]}"


RUNNER_PID_ENV = "REMAX_BENCH_RUNNER_PID"
# The stage's lines the console shows besides its progress (all of them go to its log).
SHOWN_LINES = ("[error]", "[warning]", "[resume]", "[interrupt]")


def _die_with_parent() -> None:
    """In the stage process before exec: the kernel kills it when the runner dies, even by SIGKILL, so a
    stage never keeps a GPU busy and races a re-run. (Stages also watch the runner's pid as a fallback.)
    SIGUSR1 is ignored until a stage takes it (ignoring survives exec): the deepspeed launcher, which has no
    handler of its own for it, keeps running while its ranks checkpoint."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    """A signal to the stage and every process it started (its own process group)."""
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass  # already gone


def _changed_fields(old, new, prefix: str) -> list[str]:
    """Dotted names of the fields that differ between two configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _changed_fields(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "(whole config)"]


def outcome_table(outcomes: list[Outcome]) -> str:
    width = max([len(o.key) for o in outcomes] + [5])
    lines = [f"{'stage':<{width}}  {'outcome':<11}  {'time':>8}  detail", "-" * (width + 40)]
    for o in outcomes:
        seconds = f"{o.seconds:.1f}s" if o.seconds else "-"
        lines.append(f"{o.key:<{width}}  {o.status:<11}  {seconds:>8}  {o.detail}")
    return "\n".join(lines)


def failed(outcomes: list[Outcome]) -> bool:
    return any(o.status in ("failed", "blocked", "interrupted") for o in outcomes)


def exit_code(runner: Runner, outcomes: list[Outcome]) -> int:
    """``remax-bench run``'s exit code: the stage contract's (0 done, 1 failed, 75 interrupted and resumable)."""
    if runner.stopped_by or any(o.status == "interrupted" for o in outcomes):
        return EXIT_RESUMABLE
    return EXIT_FAILED if failed(outcomes) else EXIT_COMPLETED
