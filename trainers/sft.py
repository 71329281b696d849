"""Supervised fine-tuning: next-token loss on the response tokens only.

    L_SFT = - (1 / |R|) * sum_{t in R} log pi(y_t | x, y_<t)        R = response tokens, eos included

The prompt is context, not a target: its tokens are masked out of the loss.
"""

from __future__ import annotations

import time

import torch

from remax_bench.core.checkpoint import TrainingState
from remax_bench.core.data import load_sft
from remax_bench.core.models import load_causal_lm, load_tokenizer
from remax_bench.core.stage import StageError, StageRun, check_finite, stage_main
from trainers.data import BatchStream, Totals, batches, keep_fitting, split_heldout, steps_per_pass
from trainers.engine import build_engine
from trainers.heldout import gold_reward_of, heldout_prompts, is_synthetic
from trainers.sequences import encode_pairs, forward_logits, masked_mean, token_logprobs


def sft_loss(logits: torch.Tensor, tokens: torch.Tensor, response_mask: torch.Tensor, mean=masked_mean) -> torch.Tensor:
    """Mean negative log-likelihood of the response tokens. logits [B,R,V], tokens/mask [B,R].

    ``mean`` is the masked mean to take; with several ranks, StageRun.stats.loss_mean (over the global batch)."""
    return -mean(token_logprobs(logits, tokens), response_mask)


@torch.no_grad()
def heldout_loss(model, tokenizer, rows: list[dict], suite, batch_size: int) -> float:
    model.eval()
    total, count = 0.0, 0.0
    for chunk in batches(rows, batch_size):
        batch = encode_pairs(tokenizer, [r["prompt"] for r in chunk], [r["response"] for r in chunk],
                             suite.shared.max_prompt_length, suite.shared.max_response_length).to(model.device)
        logp = token_logprobs(forward_logits(model, batch), batch.response_ids)
        total += -(logp * batch.response_mask).sum().item()
        count += batch.response_mask.sum().item()
    model.train()
    return total / max(count, 1.0)


def train(run: StageRun) -> dict:
    suite, cfg = run.suite, run.suite.sft
    tokenizer = load_tokenizer(suite.models.policy)
    rows = load_sft(suite.data.sft, suite.data.synthetic)
    if not rows:
        raise StageError("data.sft is empty")
    rows = keep_fitting(run, tokenizer, rows, "data.sft")
    train_rows, eval_rows = split_heldout(rows, cfg.eval_fraction, run.seed)
    model = run.record_dtype("policy", load_causal_lm(suite.models.policy, seed=run.seed).to(run.device))
    engine = build_engine(model, cfg.learning_rate, suite, run.per_rank("sft.batch_size"))
    model = engine.module
    steps_per_epoch = steps_per_pass(run, len(train_rows), "sft.batch_size")
    total_steps = min(cfg.max_steps or cfg.epochs * steps_per_epoch, cfg.epochs * steps_per_epoch)
    stream, totals = BatchStream(run, train_rows, "sft.batch_size", run.seed, "data.sft"), Totals()
    first = run.resume(TrainingState({"policy": engine}, {"data": stream, "totals": totals}), total_steps)
    if first == 0:
        totals.before = heldout_loss(model, tokenizer, eval_rows, suite, cfg.batch_size)
    eval_every = max(1, total_steps // 5)
    for step in range(first, total_steps):
        started = time.time()
        chunk = stream.next()
        batch = encode_pairs(tokenizer, [r["prompt"] for r in chunk], [r["response"] for r in chunk],
                             suite.shared.max_prompt_length, suite.shared.max_response_length).to(run.device)
        t0 = time.time()
        with run.autocast():
            loss = sft_loss(forward_logits(model, batch), batch.response_ids, batch.response_mask, run.stats.loss_mean)
        check_finite("SFT loss", loss, step)
        grad_norm = engine.step(loss)
        loss_value = run.stats.scalar(loss.detach())  # the global batch's token mean
        if step == first:
            run.component_bytes["policy"] = engine.state_bytes()  # optimizer states exist from now on
        tokens = int(batch.attention_mask.sum())
        totals.tokens += tokens
        metrics = {"loss": loss_value, "grad_norm": grad_norm, "tokens_per_second": tokens / (time.time() - t0)}
        if (step + 1) % eval_every == 0 or step + 1 == total_steps:
            metrics["eval_loss"] = heldout_loss(model, tokenizer, eval_rows, suite, cfg.batch_size)
            engine.save_pretrained(run.checkpoint_dir, tokenizer)  # the last good checkpoint
        run.log(step, **metrics)
        totals.seconds += time.time() - started
        run.end_iteration(step + 1)
    engine.save_pretrained(run.checkpoint_dir, tokenizer)
    summary = {
        "iterations": total_steps,
        "heldout_loss_before": totals.before,
        "heldout_loss": heldout_loss(model, tokenizer, eval_rows, suite, cfg.batch_size),
        "tokens_per_second": totals.tokens / max(totals.seconds, 1e-9),
        "n_train": len(train_rows),
        "n_heldout": len(eval_rows),
    }
    if is_synthetic(suite):
        summary.update(gold_reward_of(model, tokenizer, suite, heldout_prompts(suite)))
    return summary


if __name__ == "__main__":
    raise SystemExit(stage_main("sft", train))
