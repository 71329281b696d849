"""DPO: the preference loss on log-probability ratios against the frozen reference (Rafailov et al. 2023).

    h(x, y)  = log pi(y | x) - log pi_ref(y | x)            (sums over response tokens)
    L_DPO    = - log sigmoid(beta * (h(x, y_w) - h(x, y_l)))
    implicit reward of y: beta * h(x, y)

The reference log-probs are computed once, before training, and the reference model is then freed: DPO
never needs it again, which is where its memory advantage over online methods comes from.
Matched with PPO and ReMax: ``shared.iterations`` optimizer steps of ``shared.train_batch_size`` pairs,
``shared.learning_rate``, the same length limits.
"""

from __future__ import annotations

import gc

import torch
import torch.nn.functional as F

from remax_bench.core.checkpoint import TrainingState
from remax_bench.core.models import load_causal_lm, load_tokenizer
from remax_bench.core.stage import StageError, StageRun, check_finite, stage_main
from trainers.data import BatchStream, Totals, batches, preference_splits
from trainers.engine import build_engine, frozen_state_bytes, place_frozen, without_dropout
from trainers.heldout import gold_reward_of, heldout_prompts, is_synthetic
from trainers.sequences import encode_pairs, response_logprobs


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float):
    """Returns (loss, implicit reward of chosen, implicit reward of rejected); inputs are summed log-probs [B]."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def pair_logprobs(model, tokenizer, chunk: list[dict], suite, device, with_tokens: bool = False):
    """Summed response log-probs of chosen and rejected answers, in one forward pass (and its token count)."""
    prompts = [r["prompt"] for r in chunk]
    batch = encode_pairs(tokenizer, prompts + prompts, [r["chosen"] for r in chunk] + [r["rejected"] for r in chunk],
                         suite.shared.max_prompt_length, suite.shared.max_response_length).to(device)
    summed = (response_logprobs(model, batch) * batch.response_mask).sum(-1)
    if with_tokens:
        return summed[: len(chunk)], summed[len(chunk):], int(batch.attention_mask.sum())
    return summed[: len(chunk)], summed[len(chunk):]


@torch.no_grad()
def reference_pass(model, tokenizer, rows: list[dict], suite, device, batch_size: int) -> None:
    """Adds ref_chosen / ref_rejected to every row, once."""
    for chunk in batches(rows, batch_size):
        chosen, rejected = pair_logprobs(model, tokenizer, chunk, suite, device)
        for row, c, r in zip(chunk, chosen.tolist(), rejected.tolist()):
            row["ref_chosen"], row["ref_rejected"] = c, r


@torch.no_grad()
def implicit_accuracy(model, tokenizer, rows: list[dict], suite, device, beta: float, batch_size: int) -> dict:
    model.eval()
    right, margins = 0, []
    for chunk in batches(rows, batch_size):
        chosen, rejected = pair_logprobs(model, tokenizer, chunk, suite, device)
        ref_c = torch.tensor([r["ref_chosen"] for r in chunk], device=device)
        ref_r = torch.tensor([r["ref_rejected"] for r in chunk], device=device)
        _, rc, rr = dpo_loss(chosen, rejected, ref_c, ref_r, beta)
        right += int((rc > rr).sum())
        margins.extend((rc - rr).tolist())
    model.train()
    return {"reward_accuracy": right / len(rows), "reward_margin": sum(margins) / len(margins)}


def train(run: StageRun) -> dict:
    suite, beta = run.suite, run.suite.dpo.beta
    sft = run.inputs.get("sft")
    if not sft:
        raise StageError("DPO needs an SFT checkpoint (inputs.sft)")
    tokenizer = load_tokenizer(sft)
    train_rows, eval_rows = preference_splits(run, tokenizer, suite.reward_model.eval_fraction)
    batch_size = suite.shared.train_batch_size

    with run.timer.phase("score"):
        loaded = run.record_dtype("reference", load_causal_lm(sft, seed=run.seed, precision=suite.shared.precision))
        reference = place_frozen(loaded.to(run.device), suite, run.per_rank("shared.train_batch_size"))
        run.component_bytes["reference"] = frozen_state_bytes(reference)
        with run.autocast():
            reference_pass(reference, tokenizer, train_rows + eval_rows, suite, run.device, batch_size)
        del reference  # never needed again
        gc.collect()
    reference_seconds = run.timer.pop().get("score", 0.0)

    model = run.record_dtype("policy", load_causal_lm(sft, seed=run.seed).to(run.device))  # fp32 master weights
    without_dropout(model)
    engine = build_engine(model, suite.shared.learning_rate, suite, run.per_rank("shared.train_batch_size"))
    stream = BatchStream(run, train_rows, "shared.train_batch_size", run.seed, "data.preferences",
                         drop_last=len(train_rows) >= batch_size)  # fresh shuffled passes; each rank its share
    totals = Totals()
    first = run.resume(TrainingState({"policy": engine}, {"data": stream, "totals": totals}), suite.iterations)
    if first == 0:
        totals.before = implicit_accuracy(engine.module, tokenizer, eval_rows, suite, run.device, beta, batch_size)
    for step in range(first, suite.iterations):
        chunk = stream.next()
        with run.timer.phase("train"), run.autocast():
            chosen, rejected, tokens = pair_logprobs(engine.module, tokenizer, chunk, suite, run.device, True)
            ref_c = torch.tensor([r["ref_chosen"] for r in chunk], device=run.device)
            ref_r = torch.tensor([r["ref_rejected"] for r in chunk], device=run.device)
            loss, rc, rr = dpo_loss(chosen, rejected, ref_c, ref_r, beta)
            check_finite("DPO loss", loss, step)
            engine.step(loss)
        elapsed = run.timer.pop()["train"]
        if step == first:
            run.component_bytes["policy"] = engine.state_bytes()
        else:  # the first step of each attempt pays one-off warm-up costs
            totals.step_times.append(elapsed)
            totals.tokens += tokens
        run.log(step, loss=run.stats.scalar(loss.detach()), accuracy=run.stats.scalar((rc > rr).float().mean()),
                reward_margin=(rc - rr).mean().item(),
                chosen_reward=rc.mean().item(), rejected_reward=rr.mean().item(), time_train_s=elapsed,
                time_step_s=elapsed, tokens_per_second=tokens / max(elapsed, 1e-9))
        if (step + 1) % max(1, suite.iterations // 4) == 0:
            engine.save_pretrained(run.checkpoint_dir, tokenizer)
        run.end_iteration(step + 1)
    engine.save_pretrained(run.checkpoint_dir, tokenizer)
    after = implicit_accuracy(engine.module, tokenizer, eval_rows, suite, run.device, beta, batch_size)
    step_times, before = totals.step_times, totals.before
    per_step = sum(step_times) / max(len(step_times), 1)
    summary = {
        "iterations": suite.iterations,
        "reward_accuracy_before": before["reward_accuracy"],
        "reward_margin_before": before["reward_margin"],
        **after,
        "time_per_iteration_s": per_step,
        # The one reference pass, spread over the iterations, is DPO's only scoring cost.
        "time_split_s": {"generate": 0.0, "score": reference_seconds / suite.iterations, "train": per_step},
        "reference_pass_s": reference_seconds,
        "tokens_per_second": totals.tokens / max(sum(step_times), 1e-9),
    }
    if is_synthetic(suite) and not run.config.get("skip_heldout"):
        summary.update(gold_reward_of(engine.module, tokenizer, suite, heldout_prompts(suite)))
    return summary


if __name__ == "__main__":
    raise SystemExit(stage_main("dpo", train))
