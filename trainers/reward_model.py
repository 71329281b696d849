"""Reward model: a causal LM with a scalar head on the last non-pad token, Bradley-Terry loss.

    L_RM = - log sigmoid(r(x, y_w) - r(x, y_l))

Initialised from the SFT model (InstructGPT's choice) unless the suite names another base in models.reward.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from remax_bench.core.checkpoint import TrainingState
from remax_bench.core.models import load_reward_model, load_tokenizer
from remax_bench.core.stage import StageError, StageRun, check_finite, stage_main
from trainers.data import BatchStream, Totals, batches, preference_splits, steps_per_pass
from trainers.engine import build_engine
from trainers.sequences import encode_pairs, sequence_scores


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(chosen_scores - rejected_scores).mean()


def score_pairs(model, tokenizer, chunk: list[dict], suite, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of chosen and rejected answers, in one forward pass over both."""
    prompts = [r["prompt"] for r in chunk]
    batch = encode_pairs(tokenizer, prompts + prompts, [r["chosen"] for r in chunk] + [r["rejected"] for r in chunk],
                         suite.shared.max_prompt_length, suite.shared.max_response_length).to(device)
    scores = sequence_scores(model, batch)
    return scores[: len(chunk)], scores[len(chunk):]


@torch.no_grad()
def pairwise_accuracy(model, tokenizer, rows: list[dict], suite, device, batch_size: int) -> float:
    model.eval()
    right = 0
    for chunk in batches(rows, batch_size):
        chosen, rejected = score_pairs(model, tokenizer, chunk, suite, device)
        right += int((chosen > rejected).sum())
    model.train()
    return right / len(rows)


def train(run: StageRun) -> dict:
    suite, cfg = run.suite, run.suite.reward_model
    base = suite.models.reward or run.inputs.get("sft")
    if not base:
        raise StageError("the reward model needs models.reward or an SFT checkpoint (inputs.sft)")
    tokenizer = load_tokenizer(base)
    train_rows, eval_rows = preference_splits(run, tokenizer, cfg.eval_fraction)
    # The one stage that may start a fresh head (on the SFT model's body); fp32 master weights.
    model = run.record_dtype("reward", load_reward_model(base, seed=run.seed, new_head=True).to(run.device))
    engine = build_engine(model, cfg.learning_rate, suite, run.per_rank("reward_model.batch_size"))
    model = engine.module
    steps_per_epoch = steps_per_pass(run, len(train_rows), "reward_model.batch_size")
    total_steps = min(cfg.max_steps or cfg.epochs * steps_per_epoch, cfg.epochs * steps_per_epoch)
    eval_every = max(1, total_steps // 5)
    # Each rank's share is the same number of pairs, so DeepSpeed's gradient average is the global mean.
    stream, totals = BatchStream(run, train_rows, "reward_model.batch_size", run.seed, "data.preferences"), Totals()
    first = run.resume(TrainingState({"reward": engine}, {"data": stream, "totals": totals}), total_steps)
    if first == 0:
        totals.before = pairwise_accuracy(model, tokenizer, eval_rows, suite, run.device, cfg.batch_size)
    for step in range(first, total_steps):
        started = time.time()
        chunk = stream.next()
        with run.autocast():
            chosen, rejected = score_pairs(model, tokenizer, chunk, suite, run.device)
            loss = bradley_terry_loss(chosen, rejected)
        check_finite("reward-model loss", loss, step)
        engine.step(loss)
        if step == first:
            run.component_bytes["reward"] = engine.state_bytes()
        metrics = {"loss": run.stats.scalar(loss.detach()),
                   "accuracy": run.stats.scalar((chosen > rejected).float().mean()),
                   "reward_margin": run.stats.scalar((chosen - rejected).mean().detach())}
        if (step + 1) % eval_every == 0 or step + 1 == total_steps:
            metrics["eval_accuracy"] = pairwise_accuracy(model, tokenizer, eval_rows, suite, run.device, cfg.batch_size)
            engine.save_pretrained(run.checkpoint_dir, tokenizer)
        run.log(step, **metrics)
        totals.seconds += time.time() - started
        run.end_iteration(step + 1)
    engine.save_pretrained(run.checkpoint_dir, tokenizer)
    return {
        "iterations": total_steps,
        "heldout_accuracy_before": totals.before,
        "heldout_accuracy": pairwise_accuracy(model, tokenizer, eval_rows, suite, run.device, cfg.batch_size),
        "time_per_iteration_s": totals.seconds / max(total_steps, 1),
        "n_train": len(train_rows),
        "n_heldout": len(eval_rows),
    }


if __name__ == "__main__":
    raise SystemExit(stage_main("reward_model", train))
