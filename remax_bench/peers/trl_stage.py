"""TRL's own trainer of an algorithm, run as a stage of ours: ``python -m remax_bench.peers.trl_stage``.

The stage reads the very config our algorithm's stage reads (suite, seed, the SFT checkpoint and the reward model)
and gives TRL the same work (trl_settings.py), so the two compare on equal terms: the same process isolation,
the same peak-memory measurement (StageRun: RSS above the baseline taken after imports, or CUDA's allocator peak),
the same summary figures. One iteration is one rollout batch and every optimizer step TRL takes from it (or one
DPO step); the first iteration is warm-up and left out of the averages, as ours leaves it out.

The phases are read off TRL's own methods: ``_generate`` (tokenise, ``model.generate``, decode) is generation,
the rest of ``_generate_and_score_completions`` (reference and old-policy log-probs, reward model, advantages)
is scoring, everything else of the step (the loss's forward, backward and the optimizer) is training.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

# TRL is imported before the stage starts its memory baseline, as our stages import torch and transformers first:
# the peak counts the training, not the size of the library's code. (It warns about the vLLM build beside it,
# which this stage never uses.)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback

import torch

from remax_bench.core.data import load_prompts
from remax_bench.core.metrics import model_state_bytes
from remax_bench.core.models import format_prompt, load_reward_model, load_tokenizer
from remax_bench.core.stage import StageError, StageRun, parse_args, stage_main
from remax_bench.peers.trl_settings import TRLPlan, trl_plan
from trainers.data import keep_fitting, preference_splits
from trainers.engine import frozen_state_bytes


def timed(trainer_class: type, run: StageRun, counts: dict) -> type:
    """TRL's trainer with its generation, scoring and DPO reference pass timed in ``run.timer``, and the tokens
    of each iteration counted: generated ones (online), or every token trained on (DPO, as ours counts them)."""
    preference = trainer_class.__name__ == "DPOTrainer"

    class Timed(trainer_class):
        def _generate(self, prompts):
            with run.timer.phase("generate"):
                out = super()._generate(prompts)
            counts["tokens"] += sum(len(ids) for ids in out[1])  # each completion up to and including its eos
            return out

        def _generate_and_score_completions(self, inputs):
            with run.timer.phase("rollout"):
                return super()._generate_and_score_completions(inputs)

        def _precompute_ref_logps(self, *args, **kwargs):
            with run.timer.phase("reference"):
                return super()._precompute_ref_logps(*args, **kwargs)

        def training_step(self, model, inputs, *args, **kwargs):
            if preference:
                counts["tokens"] += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, *args, **kwargs)

    Timed.__name__ = trainer_class.__name__
    return Timed


class IterationClock(TrainerCallback):
    """Wall time of each iteration: the optimizer steps TRL takes from one rollout batch, from the start of the
    first to the end of the last (the logging in between left out, as ours leaves its own out)."""

    def __init__(self, run: StageRun, plan: TRLPlan, counts: dict, reference_s: float):
        self.run, self.plan, self.counts, self.reference_s = run, plan, counts, reference_s
        self.trainer = None
        self.steps = 0
        self.elapsed = 0.0
        self.started = 0.0
        self.mark = None
        self.iterations: list[dict] = []

    def _now(self) -> float:
        if self.run.device.type == "cuda":
            torch.cuda.synchronize(self.run.device)
        return time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        # A profile's mark (core/profiling.py): what of the step is neither generation nor scoring is training.
        self.mark = torch.profiler.record_function("train")
        self.mark.__enter__()
        self.started = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        self.elapsed += self._now() - self.started
        self.mark.__exit__(None, None, None)
        self.steps += 1
        if self.steps % self.plan.steps_per_iteration:
            return
        phases = self.run.timer.pop()
        generate = phases.get("generate", 0.0)
        rollout = phases.get("rollout", 0.0)
        figures = {"time_step_s": self.elapsed, "tokens": self.counts["tokens"],
                   "time_generate_s": generate, "time_score_s": rollout - generate,
                   "time_train_s": self.elapsed - rollout}
        if self.plan.trainer == "DPOTrainer":
            figures["time_score_s"] = self.reference_s / self.run.suite.iterations
        logged = self.trainer._metrics["train"] if self.trainer is not None else {}
        for ours, theirs in (("reward_mean", "reward"), ("kl", "kl"), ("entropy", "entropy")):
            if logged.get(theirs):
                figures[ours] = float(logged[theirs][-1])
        figures["tokens_per_second"] = figures["tokens"] / max(self.elapsed, 1e-9)
        self.run.log(len(self.iterations), **figures)
        self.iterations.append(figures)
        self.elapsed, self.counts["tokens"] = 0.0, 0


def prompt_dataset(run: StageRun, tokenizer) -> Dataset:
    """data.prompts as our online stages draw them (over-long ones dropped), chat-formatted as ours formats them."""
    suite = run.suite
    rows = load_prompts(suite.data.prompts, suite.data.synthetic, split_kind="train")
    rows = keep_fitting(run, tokenizer, rows, "data.prompts")
    return Dataset.from_dict({"prompt": [format_prompt(tokenizer, r["prompt"]) for r in rows]})


def preference_dataset(run: StageRun, tokenizer) -> Dataset:
    """Our DPO stage's training pairs (the same split), prompts chat-formatted."""
    rows, _ = preference_splits(run, tokenizer, run.suite.reward_model.eval_fraction)
    return Dataset.from_dict({"prompt": [format_prompt(tokenizer, r["prompt"]) for r in rows],
                              "chosen": [r["chosen"] for r in rows], "rejected": [r["rejected"] for r in rows]})


def build_trainer(run: StageRun, plan: TRLPlan, counts: dict):
    sft = run.inputs.get("sft")
    if not sft:
        raise StageError(f"TRL's {plan.trainer} needs the SFT checkpoint (inputs.sft)")
    tokenizer = load_tokenizer(sft)
    config_class = getattr(trl, plan.trainer.replace("Trainer", "Config"))
    args = config_class(output_dir=str(run.dir / "trl"), max_steps=run.suite.iterations * plan.steps_per_iteration,
                        **plan.config)
    trainer_class = timed(getattr(trl, plan.trainer), run, counts)
    if plan.trainer == "DPOTrainer":
        return trainer_class(model=sft, args=args, train_dataset=preference_dataset(run, tokenizer),
                             processing_class=tokenizer)
    reward_dir = run.inputs.get("reward_model")
    if not reward_dir:
        raise StageError(f"TRL's {plan.trainer} needs the reward model (inputs.reward_model)")
    reward = load_reward_model(reward_dir, seed=run.seed, precision=run.suite.shared.precision).to(run.device)
    reward_tokenizer = load_tokenizer(reward_dir)
    return trainer_class(model=sft, reward_funcs=reward, args=args, train_dataset=prompt_dataset(run, tokenizer),
                         processing_class=tokenizer, reward_processing_classes=reward_tokenizer)


def states(trainer) -> dict:
    """Model-state bytes per component, as our stages count them."""
    out = {"policy": model_state_bytes(trainer.model, trainer.optimizer)}
    if getattr(trainer, "ref_model", None) is not None:
        out["reference"] = frozen_state_bytes(trainer.ref_model)
    for i, reward in enumerate(getattr(trainer, "reward_funcs", []) or []):
        if isinstance(reward, torch.nn.Module):
            out["reward" if i == 0 else f"reward{i}"] = frozen_state_bytes(reward)
    return out


def train(run: StageRun) -> dict:
    plan = trl_plan(run.suite, run.stage, run.seed, run.device.type)
    counts = {"tokens": 0}
    trainer = build_trainer(run, plan, counts)
    reference_s = run.timer.pop().get("reference", 0.0)  # DPO's one pass, made while the trainer was built
    clock = IterationClock(run, plan, counts, reference_s)
    clock.trainer = trainer
    trainer.add_callback(clock)
    trainer.train()
    if len(clock.iterations) != run.suite.iterations:
        raise StageError(f"TRL's {plan.trainer} ran {len(clock.iterations)} of {run.suite.iterations} iterations")
    run.component_bytes.update(states(trainer))
    measured = clock.iterations[1:] or clock.iterations  # the first pays one-off warm-up costs
    seconds = sum(i["time_step_s"] for i in measured)
    tokens = sum(i["tokens"] for i in measured)
    summary = {
        "iterations": run.suite.iterations,
        "time_per_iteration_s": seconds / len(measured),
        "time_split_s": {p: sum(i[f"time_{p}_s"] for i in measured) / len(measured)
                         for p in ("generate", "score", "train")},
        "tokens_per_second": tokens / max(seconds, 1e-9),
        "generated_tokens": sum(i["tokens"] for i in clock.iterations) if plan.trainer != "DPOTrainer" else 0,
        "peer": {"library": "trl", "version": trl.__version__, "trainer": plan.trainer,
                 "config": json.loads(json.dumps(plan.config, default=str)),
                 "steps_per_iteration": plan.steps_per_iteration, "rows_per_iteration": plan.rows_per_iteration,
                 "matched": plan.matched, "differs": plan.differs},
    }
    if plan.trainer == "DPOTrainer":
        summary["reference_pass_s"] = reference_s
    else:
        summary["matched_budget"] = run.suite.matched_budget(run.stage)
        summary["generate_ms_per_token"] = 1000 * summary["time_split_s"]["generate"] * len(measured) / max(tokens, 1)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stage = json.loads(Path(args.config).read_text())["stage"]
    return stage_main(stage, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
