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

One loop runs the graph: start what is ready, up to N at once, and wait for the next event. Where the stages
run is the executor's: processes on this machine (remax_bench/local_executor.py; ``run --jobs N`` runs N at
once, each on its own share of the devices), or one Slurm job per stage (remax_bench/slurm.py), which Slurm
starts once its inputs' jobs end well (``afterok``). A failed stage stops only the stages that read it.

SIGTERM and SIGUSR1 sent to the runner reach every process of every running stage as SIGUSR1 (each stage's own
process group; the deepspeed launcher ignores it, every rank takes it): each stage writes a checkpoint at the end
of its iteration and exits resumable, no further stage starts, and the runner stops with the same exit code (the
contract is in remax_bench/core/stage.py). A stage that exits resumable on its own stops the run the same way.
Ctrl-C stops the running stages at once. On Slurm a stop ends only the watching: the jobs go on in Slurm.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from remax_bench.core import algorithms, checkpoint, results, sweep
from remax_bench.core.config import Suite
from remax_bench.core.identity import identity_view, stage_identity
from remax_bench.core.stage import EXIT_COMPLETED, EXIT_FAILED, EXIT_RESUMABLE, STOP_SIGNALS
from remax_bench.outcome import OK, Outcome

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
        self.waits: dict[str, str | None] = {}  # why a ready stage waits (devices held by another run)
        self.first_progress: dict[str, tuple[float, int]] = {}  # key -> (time, step) of its first progress line
        self.plans: dict[str, StagePlan] = {}  # the running plan's stages by key
        self.stopped_by: str | None = None  # the stop signal this runner was sent, once it was
        self.interrupted = False  # a stage ended resumable: no further stage starts
        self.held: set[str] = set()  # stages a stop kept from starting

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
        """What an input is, not where it is: the hash its result is recorded under, as the stages built on it
        record it. A complete result that is kept (its stage identity unchanged) keeps the hash it was recorded
        under; a stage of this plan that will run records its stage identity, known before it ends, so a stage
        can be handed to Slurm before its inputs finish. None for an input outside the plan without a result."""
        plan_ = plans.get(key)
        if plan_ is not None and plan_.given:
            return f"given:{plan_.given}"
        final = self.final_dir(key)
        recorded = results.read_json(final / "manifest.json") if results.is_complete(final) else None
        if plan_ is None:
            return recorded.get("config_hash") if recorded else None
        identity = stage_identity(self.stage_config(plan_, plans))
        if recorded and stage_identity(recorded.get("config") or {"stage": plan_.stage}) == identity:
            return recorded.get("config_hash")
        return identity

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

    def command(self, item: StagePlan, gpus: list[int] | None = None, master_port: int | None = None) -> list[str]:
        """The stage's command on this machine; ``gpus`` and ``master_port``: its share (remax_bench/devices.py)."""
        out = str(self.final_dir(item.key))
        runtime = self.suite.runtime
        if runtime.deepspeed.enabled and (runtime.num_gpus > 1 or runtime.num_nodes > 1) and item.stage != "eval":
            from remax_bench.core.deepspeed_config import launch_command

            return launch_command(item.module, str(self.config_path(item)), out, runtime, gpus, master_port)
        return [self.python, "-m", item.module, "--config", str(self.config_path(item)), "--out", out]

    # -- deciding ----------------------------------------------------------------------------------
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

    def resumes_from(self, item: StagePlan, config: dict) -> str:
        resume = self.resume_point(item, config)
        return f"a re-run resumes from iteration {resume}" if resume is not None else "no checkpoint, a re-run starts over"

    def preview(self, stages: list[StagePlan]) -> list[Outcome]:
        """--dry-run: what each stage would do and its command; nothing is written."""
        plans = {s.key: s for s in stages}
        outcomes, will_run = [], set()
        for index, item in enumerate(stages, 1):
            label = f"[{index}/{len(stages)}] {item.key}"
            if item.given:
                self.echo(f"{label}: using the given checkpoint {item.given}")
                outcomes.append(Outcome(item.key, "given", detail=item.given))
                continue
            reason = self.why_run(item, self.stage_config(item, plans), will_run)
            if reason is None:
                self.echo(f"{label}: complete")
                outcomes.append(Outcome(item.key, "complete"))
                continue
            will_run.add(item.key)
            after = f" after {', '.join(item.needs)}" if item.needs else ""
            self.echo(f"{label}: will run ({reason}){after}\n    {' '.join(self.preview_command(item))}")
            outcomes.append(Outcome(item.key, "planned", detail=reason))
        return outcomes

    def preview_command(self, item: StagePlan) -> list[str]:
        if self.suite.runtime.executor != "slurm":
            return self.command(item)
        from remax_bench.slurm import describe_job, task_command

        command = task_command(item.module, self.config_path(item), self.final_dir(item.key))
        return [describe_job(item.stage, self.suite.runtime) + "; on each task:", *command]

    # -- running -----------------------------------------------------------------------------------
    def executor(self, jobs: int = 1):
        if self.suite.runtime.executor == "slurm":
            from remax_bench.slurm import SlurmExecutor

            return SlurmExecutor(self)
        from remax_bench.local_executor import LocalExecutor

        return LocalExecutor(self, jobs)

    def run(self, stages: list[StagePlan], dry_run: bool = False, jobs: int = 1) -> list[Outcome]:
        """The plan's stages, dependencies first: whatever is ready starts, up to ``jobs`` at once; a stage
        whose input failed is blocked, and every other goes on. After a stop (a signal to the runner, or a stage
        that ended resumable) no stage starts and the running ones end as the stop tells them."""
        if dry_run:
            return self.preview(stages)
        plans = self.plans = {s.key: s for s in stages}
        labels = {s.key: f"[{i}/{len(stages)}] {s.key}" for i, s in enumerate(stages, 1)}
        outcomes: dict[str, Outcome] = {}
        waiting = list(stages)
        with self.executor(jobs) as executor, self._taking_stop_signals(executor):
            try:
                while waiting or executor.running:
                    waiting = [item for item in waiting
                               if not self.try_start(item, plans, outcomes, executor, labels[item.key])]
                    if not executor.running and (not waiting or self.stopping):
                        break
                    if self.stopped_by and not executor.owns_stages:
                        for outcome in executor.interrupt():  # Slurm's jobs go on; only the watching stops
                            outcomes[outcome.key] = outcome
                        break
                    event = executor.next_event(timeout=self._wait_s(executor))
                    if self.stopped_by:  # again: a stage still importing ignores SIGUSR1 until it takes it
                        executor.forward_stop()
                    if event is None:
                        continue
                    kind, key, payload = event
                    if kind == "done":
                        outcomes[key] = payload
                        self.interrupted |= payload.status == "interrupted"
                        getattr(self.echo, "forget", lambda key: None)(key)
                    elif kind == "line":
                        self.show_line(labels[key], key, payload)
                    else:
                        self.echo(f"{labels[key]}: {payload}")
            except KeyboardInterrupt:
                self.stopped_by = "SIGINT"
                for outcome in executor.interrupt():
                    outcomes[outcome.key] = outcome
        if self.stopping:
            self.echo("interrupted: stopping here; run the same command again to resume")
        return [outcomes.get(s.key, Outcome(s.key, "not run")) for s in stages]

    @property
    def stopping(self) -> bool:
        return bool(self.stopped_by) or self.interrupted

    def _wait_s(self, executor) -> float | None:
        """How long the loop waits for an event: for ever while a stage runs; without one only a device held by
        another run can be awaited, so it looks again soon; after a stop it re-sends the stop every few seconds."""
        wait = None if executor.running else executor.poll_s
        return min(wait or STOP_RESEND_S, STOP_RESEND_S) if self.stopped_by else wait

    @contextmanager
    def _taking_stop_signals(self, executor):
        """SIGTERM and SIGUSR1 to the runner stop the run: no stage starts after them, and every running stage
        gets SIGUSR1 in its whole process group, so every rank checkpoints at the end of its iteration and exits
        resumable (the deepspeed launcher, which would end its ranks on SIGTERM, ignores SIGUSR1). Only the main
        thread can take signals; elsewhere they keep their default action."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def forward(signum, frame):
            self.stopped_by = signal.Signals(signum).name
            executor.forward_stop()

        previous = {signum: signal.signal(signum, forward) for signum in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def try_start(self, item: StagePlan, plans: dict, outcomes: dict, executor, label: str) -> bool:
        """Start the stage or settle its outcome (given, skipped, blocked): True; False while it must wait."""
        if item.key in self.held:
            return False
        if item.given:
            outcomes[item.key] = Outcome(item.key, "given", detail=item.given)
            self.echo(f"{label}: using the given checkpoint {item.given}")
            return True
        bad = [n for n in item.needs if n in outcomes and outcomes[n].status not in OK]
        missing = [n for n in item.needs if n not in plans and not results.is_complete(self.final_dir(n))]
        if bad or missing:
            why = ", ".join(bad + [f"{m} (no result; run it first)" for m in missing])
            outcomes[item.key] = Outcome(item.key, "blocked", detail=f"needs {why}")
            self.echo(f"{label}: blocked, needs {why}")
            return True
        pending = [n for n in item.needs if n in plans and n not in outcomes]
        # Locally a stage waits for its inputs to end; Slurm is handed it once their jobs are submitted.
        if pending and (executor.waits_for_inputs or any(n not in executor.running for n in pending)):
            return False
        if not executor.has_room():
            return False
        config = self.stage_config(item, plans)
        reason = self.why_run(item, config)
        if reason is None:
            outcomes[item.key] = Outcome(item.key, "skipped", detail="already complete")
            self.echo(f"{label}: already complete, skipped")
            return True
        if self.stopping:
            self.held.add(item.key)
            self.echo(f"{self.stopped_by or 'interrupted'}: stopping before {item.key}; run the same command again "
                      "to go on")
            return False
        wait = executor.start(item, config, label, pending, reason)
        if wait is not None and self.waits.get(item.key) != wait:
            self.echo(f"{label}: {wait}")  # once per change: another run holds the GPUs it needs
        self.waits[item.key] = wait
        return wait is None

    def expected_steps(self, item: StagePlan) -> int | None:
        if item.stage in algorithms.REGISTRY:
            return self.suite_of(item).iterations
        return None

    def show_line(self, label: str, key: str, line: str) -> None:
        """One line of a running stage's output: its progress on the live display, its errors and warnings."""
        progress = results.parse_progress(line)
        if progress:
            self.show_progress(label, key, progress[1], progress[2])
        elif line.startswith(SHOWN_LINES):
            self.echo(f"    {label}: {line.rstrip()}")

    def show_progress(self, label: str, key: str, step: int, figures: str) -> None:
        try:
            shown = json.loads(figures)
        except json.JSONDecodeError:
            shown = {}
        keys = [k for k in ("reward_mean", "kl", "loss", "accuracy", "eval_loss") if k in shown]
        text = " ".join(f"{k}={shown[k]:.3f}" for k in keys)
        expected = self.expected_steps(self.plans[key])
        step_text = f"step {step}/{expected}" if expected else f"step {step}"
        seen_at, seen_step = self.first_progress.setdefault(key, (time.time(), step))
        if expected and step > seen_step:  # from this attempt's own pace (a resumed stage starts mid-way)
            step_text += f" ETA {max(0.0, (time.time() - seen_at) / (step - seen_step) * (expected - step)):.0f}s"
        show = getattr(self.echo, "progress", None)  # a live display keeps one line per running stage
        if show is None:
            self.echo(f"    {label} {step_text} {text}")
        else:
            show(f"    {label} {step_text} {text}", key=key)


SHOWN_LINES = ("[error]", "[warning]", "[resume]", "[interrupt]")
STOP_RESEND_S = 5.0  # after a stop, SIGUSR1 again this often to a stage that has not taken it yet


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
