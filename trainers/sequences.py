"""Token layout, log-probabilities and generation shared by every stage.

One layout everywhere: ``[prompt, left-padded to P | response, right-padded to R]``. This is what
``generate`` returns with left padding, so training, scoring and generation all see the same tensors.
``response_mask[b, t]`` is 1 for response tokens up to and including the first eos, 0 after it.
Position ids are derived from the attention mask, so left padding never shifts a token's position.

Rows that answer the same prompt (the k samples of a prompt, ReMax's sampled and greedy answers, DPO's chosen and
rejected ones) share one pass over it: the distinct prompts go through the model once, their keys and values are
handed to every row that answers them, and the answers run on top (``SharedPrompts``). Each answer token attends
to exactly the keys and values the whole-sequence pass gives it, so the figures are that pass's (to float
rounding), at the cost of the distinct prompts instead of every row's. Only the response positions go through the
LM head (``logits_to_keep``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel

from remax_bench.core.models import format_prompt, tokenize_prompts


@dataclass
class SequenceBatch:
    input_ids: torch.Tensor  # [B, P + R]
    attention_mask: torch.Tensor  # [B, P + R]
    prompt_width: int  # P
    response_mask: torch.Tensor  # [B, R], float

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width :]

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def to(self, device) -> "SequenceBatch":
        return SequenceBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.prompt_width, self.response_mask.to(device)
        )

    def select(self, rows) -> "SequenceBatch":
        return SequenceBatch(self.input_ids[rows], self.attention_mask[rows], self.prompt_width, self.response_mask[rows])


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def encode_prompts(tokenizer, instructions: list[str], max_prompt_length: int) -> dict[str, torch.Tensor]:
    """Chat-formatted, left-padded prompt tokens. A prompt over the limit is an error naming it."""
    encoded = tokenize_prompts(tokenizer, [format_prompt(tokenizer, instruction) for instruction in instructions])
    for text, ids in zip(instructions, encoded):
        if len(ids) > max_prompt_length:
            raise ValueError(
                f"prompt of {len(ids)} tokens exceeds shared.max_prompt_length={max_prompt_length}: {text[:80]!r}"
            )
    return tokenizer.pad({"input_ids": encoded}, padding=True, return_tensors="pt")


def prompt_fits(tokenizer, instruction: str, max_prompt_length: int) -> bool:
    return len(tokenize_prompts(tokenizer, [format_prompt(tokenizer, instruction)])[0]) <= max_prompt_length


def encode_pairs(
    tokenizer, instructions: list[str], responses: list[str], max_prompt_length: int, max_response_length: int
) -> SequenceBatch:
    """Prompt + given response (SFT demonstrations, preference pairs), in the shared layout.

    The response gets the eos token (the model must learn to stop) and is truncated to the limit.
    """
    prompts = encode_prompts(tokenizer, instructions, max_prompt_length)
    eos = tokenizer.eos_token_id
    response_ids = [
        tokenizer(r, add_special_tokens=False)["input_ids"][: max_response_length - 1] + [eos] for r in responses
    ]
    width = max(len(r) for r in response_ids)
    ids = torch.full((len(responses), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(responses), width))
    for row, r in enumerate(response_ids):
        ids[row, : len(r)] = torch.tensor(r)
        mask[row, : len(r)] = 1.0
    return SequenceBatch(
        input_ids=torch.cat([prompts["input_ids"], ids], dim=1),
        attention_mask=torch.cat([prompts["attention_mask"], mask.long()], dim=1),
        prompt_width=prompts["input_ids"].shape[1],
        response_mask=mask,
    )


# -- rows that share a prompt ----------------------------------------------------------------------------
@dataclass
class SharedPrompts:
    """The distinct prompts of a batch (left-padded alike, so equal prompts are equal rows) and each row's."""

    input_ids: torch.Tensor  # [m, P]
    attention_mask: torch.Tensor  # [m, P]
    owner: torch.Tensor  # [n]: the distinct prompt row i answers

    @classmethod
    def of(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> "SharedPrompts | None":
        """None when no two rows share a prompt (then one pass over the whole batch is already the least work)."""
        if input_ids.shape[1] < 2:
            return None
        width = input_ids.shape[1]
        unique, owner = torch.unique(torch.cat([input_ids, attention_mask.to(input_ids.dtype)], dim=1), dim=0,
                                     return_inverse=True)
        if len(unique) == len(input_ids):
            return None
        return cls(unique[:, :width], unique[:, width:].to(attention_mask.dtype), owner)

    def cache(self, model, width: int, **kwargs):
        """One pass over the first ``width`` tokens of each distinct prompt; its keys and values, one copy per row
        (gathered, so gradients of several rows sum into their prompt), and the pass's output."""
        ids, mask = self.input_ids[:, :width], self.attention_mask[:, :width]
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=True, **kwargs)
        out.past_key_values.batch_select_indices(self.owner)
        return out


def can_share_prompts(model) -> bool:
    """Whether a model can take a prompt's keys and values from a separate pass. Not under gradient checkpointing
    while it trains (transformers drops past_key_values inside checkpointed layers), nor with ZeRO-3 partitioned
    weights (every pass gathers them; the plain pass gathers once)."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, PreTrainedModel):
        return False
    if any(hasattr(p, "ds_id") for p in inner.parameters()):
        return False
    return not (inner.is_gradient_checkpointing and inner.training and torch.is_grad_enabled())


def _shared(model, batch: SequenceBatch) -> SharedPrompts | None:
    if not can_share_prompts(model):
        return None
    width = batch.prompt_width
    return SharedPrompts.of(batch.input_ids[:, :width], batch.attention_mask[:, :width])


def _answers(model, batch: SequenceBatch, cache):
    """The answers' pass on top of their prompts' keys and values."""
    return model(input_ids=batch.response_ids, attention_mask=batch.attention_mask,
                 position_ids=position_ids(batch.attention_mask)[:, batch.prompt_width :], past_key_values=cache,
                 use_cache=True)


def forward_logits(model, batch: SequenceBatch) -> torch.Tensor:
    """Logits that predict each response token: [B, R, V] (positions P - 1 .. P + R - 2)."""
    width = batch.input_ids.shape[1] - batch.prompt_width  # R
    shared = _shared(model, batch)
    if shared is None:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=position_ids(batch.attention_mask), use_cache=False, logits_to_keep=width + 1)
        return out.logits[:, :-1].float()
    prompts = shared.cache(model, batch.prompt_width, logits_to_keep=1)  # the last prompt token predicts token 0
    answers = _answers(model, batch, prompts.past_key_values)
    return torch.cat([prompts.logits[shared.owner], answers.logits[:, :-1]], dim=1).float()


def response_hidden_states(model, batch: SequenceBatch) -> torch.Tensor:
    """The backbone's last hidden states over the whole sequence [B, P + R, h] (a scalar-head model's input), the
    prompt part computed once per distinct prompt."""
    body = getattr(model, model.base_model_prefix)
    shared = _shared(model, batch)
    if shared is None:
        return body(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=position_ids(batch.attention_mask), use_cache=False).last_hidden_state
    prompts = shared.cache(body, batch.prompt_width)
    answers = _answers(body, batch, prompts.past_key_values)
    return torch.cat([prompts.last_hidden_state[shared.owner], answers.last_hidden_state], dim=1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log pi(token) for each position: [B, R]."""
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def response_logprobs(model, batch: SequenceBatch) -> torch.Tensor:
    return token_logprobs(forward_logits(model, batch), batch.response_ids)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position: [B, R]."""
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def sequence_scores(reward_model, batch: SequenceBatch) -> torch.Tensor:
    """Scalar reward-model score of each whole sequence (head on the last non-pad token): [B]."""
    if _shared(reward_model, batch) is None or not hasattr(reward_model, "score"):
        out = reward_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           position_ids=position_ids(batch.attention_mask), use_cache=False)
        return out.logits.squeeze(-1).float()
    hidden = response_hidden_states(reward_model, batch)
    # transformers' rule for a sequence classifier: the last token that is not the pad token
    pad = reward_model.config.pad_token_id
    positions = torch.arange(batch.input_ids.shape[1], device=hidden.device)
    last = (positions * (batch.input_ids != pad)).argmax(-1) if pad is not None else positions[-1:].expand(len(hidden))
    return reward_model.score(hidden[torch.arange(len(hidden), device=hidden.device), last]).squeeze(-1).float()


class GreedyRows(LogitsProcessor):
    """Makes the rows flagged in ``greedy`` pick their argmax, inside one sampled ``generate`` call.

    ReMax needs a sampled and a greedy response per prompt; with this both come from one batched pass.
    It runs after temperature / top-k / top-p, which never change the argmax.
    """

    def __init__(self, greedy: torch.Tensor):
        self.greedy = greedy

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        best = scores.argmax(-1, keepdim=True)
        forced = torch.full_like(scores, float("-inf")).scatter(-1, best, 0.0)
        return torch.where(self.greedy.to(scores.device).unsqueeze(-1), forced, scores)


def response_mask_from_ids(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 up to and including the first eos (or everything, when no eos was produced)."""
    is_eos = response_ids == eos_token_id
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # strictly after the first eos
    return (~after_eos).float()


@torch.no_grad()
def generate(
    model,
    tokenizer,
    instructions: list[str],
    max_prompt_length: int,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool | torch.Tensor = False,
    synced_gpus: bool = False,
) -> SequenceBatch:
    """Batched generation with left padding. ``greedy`` is all-greedy (True) or a per-row mask.

    ``synced_gpus``: keep stepping until every rank is done (needed under ZeRO-3 with several ranks)."""
    device = next(model.parameters()).device
    prompts = encode_prompts(tokenizer, instructions, max_prompt_length).to(device)
    all_greedy = isinstance(greedy, bool) and greedy
    kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if synced_gpus:
        kwargs["synced_gpus"] = True
    if all_greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k or None)
        if isinstance(greedy, torch.Tensor):
            kwargs["logits_processor"] = LogitsProcessorList([GreedyRows(greedy)])
    was_training = model.training
    model.eval()
    shared = None if synced_gpus or not can_share_prompts(model) else SharedPrompts.of(prompts["input_ids"],
                                                                                      prompts["attention_mask"])
    if shared is not None:
        # The distinct prompts but their last token go through the model once; generate starts from each row's copy
        # of their keys and values (its first step runs the last prompt token, then samples as always).
        kwargs["past_key_values"] = shared.cache(model, prompts["input_ids"].shape[1] - 1, logits_to_keep=1).past_key_values
    sequences = model.generate(**prompts, **kwargs)
    model.train(was_training)
    response_ids = sequences[:, prompts["input_ids"].shape[1] :]
    return answers_batch(prompts, response_ids, tokenizer.eos_token_id, tokenizer.pad_token_id)


def answers_batch(prompts: dict[str, torch.Tensor], response_ids: torch.Tensor, eos_token_id: int,
                  pad_token_id: int) -> SequenceBatch:
    """Left-padded prompts (``encode_prompts``) and generated responses [B, R] in the shared layout; both
    rollout backends end here. The mask covers each response up to and including its first eos."""
    response_mask = response_mask_from_ids(response_ids, eos_token_id)
    # Everything after the first eos becomes pad, so later forwards see exactly what was generated.
    response_ids = torch.where(response_mask.bool(), response_ids, torch.full_like(response_ids, pad_token_id))
    return SequenceBatch(
        input_ids=torch.cat([prompts["input_ids"], response_ids], dim=1),
        attention_mask=torch.cat([prompts["attention_mask"], response_mask.long()], dim=1),
        prompt_width=prompts["input_ids"].shape[1],
        response_mask=response_mask.to(response_ids.device),
    )


def decode_responses(tokenizer, batch: SequenceBatch) -> list[str]:
    texts = []
    for ids, mask in zip(batch.response_ids, batch.response_mask):
        kept = ids[mask.bool()].tolist()
        if kept and kept[-1] == tokenizer.eos_token_id:
            kept = kept[:-1]
        texts.append(tokenizer.decode(kept, skip_special_tokens=True))
    return texts
