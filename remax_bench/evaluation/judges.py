"""Judges, configured in the suite (``eval.judge``), never hard-wired.

Two kinds of verdict, in the conventions of the tools whose metrics we use:
- pairwise (AlpacaEval): a preference in alpaca_eval's encoding -- 1 when ``output_1`` (the reference
  generator) wins, 2 when ``output_2`` (the evaluated model) wins, 1.5 for a tie;
- single (MT-bench): a score from 1 to 10 for one turn's answer, as FastChat's single-answer grading.

Judges:
- ``gold``: the synthetic task's gold scorer. Pairwise: the higher gold score wins (equal: 1.5).
  Single: 1 + 9 * gold, so gold 0 -> 1 and gold 1 -> 10.
- ``reward_model``: a Bradley-Terry reward model (``models.load_reward_model``; ``eval.judge.model`` when set,
  else the suite's reward model). Pairwise: the higher score
  wins. Single: 1 + 9 * sigmoid(score). The sigmoid is the Bradley-Terry probability of beating an answer of
  score 0, so the mapping is fixed per answer (unlike a min-max over a batch, which would make one answer's
  grade depend on the others and could not be cached).
- ``openai``: any OpenAI-compatible endpoint through the openai>=1 client; the key comes from the
  environment variable named in ``eval.judge.api_key_env`` and is never written anywhere. Pairwise verdicts
  use this project's short comparison prompt in alpaca_eval's style (outputs named ``m`` and ``M``, shown in
  a random but fixed order against position bias); single verdicts use FastChat's judge prompts (reference-
  guided for math, reasoning and coding) and its ``[[rating]]`` parsing.
- ``vllm_local``: starts ``vllm serve`` on 127.0.0.1, then is the ``openai`` judge against it; the server is
  always stopped.

A call that fails, or whose answer cannot be parsed, is retried (``max_retries``); then the item is
unjudged: its verdict has ``value=None`` and an ``error``, and it is counted, never dropped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from remax_bench.evaluation.common import EvalConfigError, dir_fingerprint
from remax_bench.evaluation.llm_judges import OpenAIJudge, VLLMLocalJudge
from remax_bench.evaluation.verdicts import (
    Judge,
    Verdict,
    preference_from_scores,
)


# -- gold ------------------------------------------------------------------------------------------
class GoldJudge(Judge):
    type = "gold"

    @staticmethod
    def _score(instruction: str, answer: str) -> tuple[float | None, str | None]:
        from remax_bench.core.task import gold_score

        try:
            return gold_score(instruction, answer), None
        except ValueError as err:  # not an instruction of the synthetic task
            return None, f"gold scorer: {err}"

    def pairwise(self, items):
        verdicts = []
        for item in items:
            g1, err1 = self._score(item.instruction, item.output_1)
            g2, err2 = self._score(item.instruction, item.output_2)
            if err1 or err2:
                verdicts.append(Verdict(None, error=err1 or err2))
            else:
                verdicts.append(Verdict(preference_from_scores(g1, g2), raw=f"gold {g1:.4f} vs {g2:.4f}",
                                        extra={"score_1": g1, "score_2": g2}))
        return verdicts

    def single(self, items):
        verdicts = []
        for item in items:
            gold, err = self._score(item.question["turns"][item.turn - 1], item.answers[item.turn - 1])
            verdicts.append(Verdict(None, error=err) if err else
                            Verdict(1.0 + 9.0 * gold, raw=f"gold {gold:.4f}", extra={"gold": gold}))
        return verdicts


# -- reward model ----------------------------------------------------------------------------------
def reward_to_rating(score: float) -> float:
    """1 + 9 * sigmoid(score): the Bradley-Terry probability of beating a score-0 answer, on FastChat's 1-10."""
    return 1.0 + 9.0 / (1.0 + math.exp(-score))


class RewardModelJudge(Judge):
    type = "reward_model"
    cacheable = True

    def __init__(self, checkpoint: str, batch_size: int = 16, device: str | None = None, model=None, tokenizer=None):
        self.checkpoint = str(checkpoint)
        self.batch_size = batch_size
        self.device = device
        self.model, self.tokenizer = model, tokenizer
        self._fingerprint = dir_fingerprint(checkpoint)

    def identity(self):
        return {"type": self.type, "model": self._fingerprint}

    def _load(self):
        if self.model is None:
            import torch

            from remax_bench.core.models import load_reward_model, load_tokenizer

            self.tokenizer = load_tokenizer(self.checkpoint)
            self.model = load_reward_model(self.checkpoint)
            self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device or "cpu").eval()

    def scores(self, conversations: list[list[dict]], answers: list[str]) -> list[float]:
        """Reward of each answer after its conversation, in the layout the trainers score:
        chat-formatted prompt + answer + eos, left-padded, position ids from the mask."""
        import torch

        from remax_bench.core.models import format_conversation, tokenize_prompts

        self._load()
        tok = self.tokenizer
        out: list[float] = []
        for start in range(0, len(answers), self.batch_size):
            ids = []
            for messages, answer in zip(conversations[start : start + self.batch_size],
                                        answers[start : start + self.batch_size]):
                prompt = tokenize_prompts(tok, [format_conversation(tok, messages)])[0]
                ids.append(prompt + tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
            batch = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")
            mask = batch["attention_mask"].to(self.device)
            with torch.no_grad():
                logits = self.model(input_ids=batch["input_ids"].to(self.device), attention_mask=mask,
                                    position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0), use_cache=False).logits
            out.extend(logits.squeeze(-1).float().tolist())
        return out

    def pairwise(self, items):
        convs = [[{"role": "user", "content": it.instruction}] for it in items]
        s1 = self.scores(convs, [it.output_1 for it in items])
        s2 = self.scores(convs, [it.output_2 for it in items])
        return [Verdict(preference_from_scores(a, b), raw=f"reward {a:.4f} vs {b:.4f}", extra={"score_1": a, "score_2": b})
                for a, b in zip(s1, s2)]

    def single(self, items):
        convs, answers = [], []
        for it in items:
            messages = []
            for k in range(it.turn - 1):
                messages += [{"role": "user", "content": it.question["turns"][k]},
                             {"role": "assistant", "content": it.answers[k]}]
            messages.append({"role": "user", "content": it.question["turns"][it.turn - 1]})
            convs.append(messages)
            answers.append(it.answers[it.turn - 1])
        return [Verdict(reward_to_rating(s), raw=f"reward {s:.4f}", extra={"reward": s})
                for s in self.scores(convs, answers)]

    def close(self):
        self.model = None


def build_judge(judge_cfg: Any, *, reward_model: str | None = None, judge_prompts: Callable[[], dict] | None = None,
                log_dir: str | Path | None = None, device: str | None = None,
                alpaca_annotator: str | None = None) -> Judge:
    """The judge of the suite's ``eval.judge`` block. Use it as a context manager (vllm_local starts a server)."""
    kind = judge_cfg.type
    common = dict(api_key_env=judge_cfg.api_key_env, max_retries=judge_cfg.max_retries, timeout_s=judge_cfg.timeout_s,
                  judge_prompts=judge_prompts)
    if kind == "gold":
        return GoldJudge()
    if kind == "reward_model":
        # eval.judge.model names a separate judging reward model (one the policies were not trained against);
        # otherwise the suite's own reward model.
        checkpoint = judge_cfg.model or reward_model
        if not checkpoint:
            raise EvalConfigError("eval.judge.type 'reward_model' needs a reward-model checkpoint: set eval.judge.model "
                                  "or give the stage config's inputs.reward_model")
        return RewardModelJudge(checkpoint, device=device)
    if kind == "openai":
        return OpenAIJudge(judge_cfg.model, base_url=judge_cfg.base_url, alpaca_annotator=alpaca_annotator, **common)
    if kind == "vllm_local":
        log = Path(log_dir) / "vllm_judge_server.log" if log_dir else None
        return VLLMLocalJudge(judge_cfg.model, port=judge_cfg.port, serve_args=judge_cfg.serve_args, log_path=log,
                              alpaca_annotator=alpaca_annotator, **common)
    raise EvalConfigError(f"eval.judge.type: expected one of gold, openai, vllm_local, reward_model, got {kind!r}")
