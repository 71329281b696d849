"""shared.rollout_backend without an engine: the layout vLLM's answers are put in, the sampling settings it is
given, the KV cache it is sized with, the checks before a run, the memory estimate and the bench table.
The engine itself runs in tests/test_vllm_rollout.py (make test-vllm)."""

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml

from remax_bench.bench import bench_row, engine_speedup_bound, format_bench
from remax_bench.core.config import SuiteError
from remax_bench.core.models import build_tiny_model
from remax_bench.core.suite_file import load_suite_text
from remax_bench.estimate import EstimateInputs, estimate
from trainers.sequences import encode_prompts, generate
from trainers.vllm_rollout import BLOCK_TOKENS, kv_cache_bytes, sampling_kwargs, to_sequence_batch

NANO = Path(__file__).parent / "fixtures" / "nano.yaml"


def _suite_data(**shared):
    data = yaml.safe_load(NANO.read_text())
    data["shared"].update(shared)
    return data


def test_answers_are_laid_out_as_generate_lays_them_out():
    model, tokenizer = build_tiny_model("tiny:nano", seed=3)
    prompts = ["reverse 'ab'", "a much longer instruction about 'abc'", "x"]
    expected = generate(model, tokenizer, prompts, 64, 6, greedy=True)
    # The same answers as token lists, the way vLLM returns them: each row's tokens up to and including eos.
    answers = []
    for ids, mask in zip(expected.response_ids, expected.response_mask):
        answers.append(ids[mask.bool()].tolist())
    got = to_sequence_batch(encode_prompts(tokenizer, prompts, 64), answers, tokenizer.eos_token_id,
                            tokenizer.pad_token_id)
    width = expected.response_ids.shape[1]
    assert got.prompt_width == expected.prompt_width
    assert torch.equal(got.input_ids[:, : got.prompt_width + width], expected.input_ids)
    assert torch.equal(got.response_mask[:, :width], expected.response_mask)


def test_layout_by_hand_eos_short_rows_and_padding():
    eos, pad = 2, 0
    prompts = {"input_ids": torch.tensor([[0, 5, 6], [7, 8, 9]]), "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]])}
    batch = to_sequence_batch(prompts, [[11, eos], [12, 13, 14]], eos, pad)
    assert batch.prompt_width == 3
    assert batch.response_ids.tolist() == [[11, eos, pad], [12, 13, 14]]
    assert batch.response_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch.attention_mask.tolist() == [[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]


def test_sampling_settings_are_the_hf_paths():
    shared = load_suite_text(yaml.safe_dump(_suite_data(generation={"temperature": 0.7, "top_p": 0.9, "top_k": 0}))).shared
    sampled = sampling_kwargs(shared, greedy=False, seed=5, eos_token_id=2)
    assert sampled["temperature"] == 0.7 and sampled["top_p"] == 0.9 and sampled["top_k"] == -1  # 0: top-k off
    assert sampled["max_tokens"] == shared.max_response_length and sampled["seed"] == 5
    assert sampled["stop_token_ids"] == [2] and sampled["ignore_eos"] is True  # the tokenizer's eos, nothing else
    greedy = sampling_kwargs(shared, greedy=True, seed=5, eos_token_id=2)
    assert greedy["temperature"] == 0.0 and "top_p" not in greedy


def test_kv_cache_sized_by_hand():
    config = SimpleNamespace(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, hidden_size=128,
                             head_dim=None)
    # 2 (K, V) * 4 layers * 2 kv heads * 32 dims * 4 bytes = 2048 bytes per token; 70 tokens -> 5 blocks of 16.
    per_row = 5 * BLOCK_TOKENS * 2048
    assert kv_cache_bytes(config, rows=3, max_tokens=70, dtype_bytes=4) == int(1.25 * 3 * per_row)


def test_suite_field_and_preflight(monkeypatch):
    from remax_bench import preflight
    from remax_bench.evaluation import generation

    with pytest.raises(SuiteError, match="rollout_backend"):
        load_suite_text(yaml.safe_dump(_suite_data(rollout_backend="sglang")))
    suite = load_suite_text(yaml.safe_dump(_suite_data(rollout_backend="vllm")))
    monkeypatch.setattr(generation, "vllm_available", lambda: False)
    assert any("rollout_backend" in p and "not installed" in p for p in preflight.problems(suite))
    assert not any("rollout_backend" in p for p in preflight.problems(suite, ["sft", "dpo"]))  # no online stage
    data = _suite_data(rollout_backend="vllm")
    data["runtime"] = {"device": "cpu", "num_gpus": 2, "deepspeed": {"enabled": True}}
    two_ranks = load_suite_text(yaml.safe_dump(data))
    monkeypatch.setattr(generation, "vllm_available", lambda: True)
    monkeypatch.setattr(generation, "vllm_is_cpu_build", lambda: True)
    assert any("2 ranks" in p for p in preflight.problems(two_ranks))


def test_estimate_counts_the_engine_resident():
    hf = estimate("tiny:micro", EstimateInputs(prompt_length=64, response_length=24, rollout_batch_per_gpu=32,
                                               train_batch_per_gpu=32, precision="fp32"), "remax")
    vllm = estimate("tiny:micro", EstimateInputs(prompt_length=64, response_length=24, rollout_batch_per_gpu=32,
                                                 train_batch_per_gpu=32, precision="fp32", rollout_backend="vllm"),
                    "remax")
    engine = {c.kind: c.gpu_bytes for c in vllm.components if c.model == "rollout_engine"}
    assert engine["params"] == 4 * vllm.param_counts["policy"]  # an fp32 copy of the policy
    kv = [c.gpu_bytes for c in hf.components if c.kind == "kv_cache"]
    assert engine["kv_cache"] == int(1.25 * kv[0])  # 64 rows (32 sampled + 32 greedy), resident
    assert vllm.state_bytes() == hf.state_bytes()  # the engine is not a model state
    assert vllm.gpu_bytes > hf.gpu_bytes


def test_bench_table_compares_backends():
    def summary(total, generate, sync, backend):
        engine = {"backend": backend}
        if backend == "vllm":
            engine.update(engine_start_s=3.0, engine_weight_bytes=2**20, engine_kv_cache_bytes=2**20)
        return {"peak_memory_bytes": 100 * 2**20, "model_state_total_bytes": 50 * 2**20, "time_per_iteration_s": total,
                "time_split_s": {"generate": generate, "sync": sync, "score": 1.0, "train": 1.0},
                "generate_ms_per_token": generate, "rollout_engine": engine, "memory_kind": "rss_above_baseline"}

    table = pd.DataFrame([bench_row("remax", summary(4.0, 2.0, 0.0, "hf")),
                          bench_row("remax", summary(2.0, 0.5, 0.05, "vllm"))])
    assert table.engine_mib.tolist() == [0.0, 2.0] and math.isclose(table.sync_share[1], 0.025)
    text = format_bench(table, "tiny:x")
    assert "remax: vllm rollouts 2.00x the speed of hf rollouts per iteration; generation 4.00x per token; " \
           "weight sync 2.5% of an iteration; engine start-up 3.0 s (once)" in text
    # Amdahl's bound from the hf row: 2.0 s of a 4.0 s iteration generate, so at most 4.0 / 2.0 = 2x.
    assert "remax (hf rollouts): generation is 50.0% of an iteration: a rollout engine that generated for free " \
           "would make it 2.00x faster" in text
    assert engine_speedup_bound(1.0, 4.0) == 4.0 / 3.0 and engine_speedup_bound(4.0, 4.0) == math.inf


class _RecordingLLM:
    """Stands in for vllm.LLM where only CUDA can run it: records the calls, answers every prompt with eos."""

    calls: list = []

    def __init__(self, **kwargs):
        self.calls.append(("init", kwargs.get("enable_sleep_mode", False)))

    def apply_model(self, fn):
        return [0]

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self):
        self.calls.append(("wake_up",))

    def collective_rpc(self, method, kwargs):
        self.calls.append((method, len(list(kwargs["weights_iterator"]))))

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append(("generate", len(prompts)))
        eos = params[0].kwargs["stop_token_ids"][0]
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[eos])]) for _ in prompts]


@pytest.mark.parametrize("device, sleeps", [("cuda", True), ("cpu", False)])
def test_engine_sleeps_between_rollouts_on_cuda_only(tmp_path, monkeypatch, device, sleeps):
    """vLLM's sleep mode needs CUDA, so this is the seam: the order of the engine calls, on a recording stand-in."""
    import sys

    from remax_bench.core.models import save_pretrained
    from trainers.vllm_rollout import VLLMRollouts

    fake = SimpleNamespace(LLM=_RecordingLLM, SamplingParams=lambda **kw: SimpleNamespace(kwargs=kw))
    monkeypatch.setitem(sys.modules, "vllm", fake)
    _RecordingLLM.calls = []
    model, tokenizer = build_tiny_model("tiny:nano", seed=0)
    path = save_pretrained(model, tokenizer, tmp_path / "policy")
    shared = load_suite_text(yaml.safe_dump(_suite_data(rollout_backend="vllm"))).shared
    engine = VLLMRollouts(str(path), tokenizer, shared, seed=0, rows=2, device=torch.device(device))
    batch = engine.generate(["a", "b"], greedy=True)
    engine.sync(model)
    engine.generate(["a", "b"])
    n_tensors = len(model.state_dict())
    if sleeps:
        assert _RecordingLLM.calls == [("init", True), ("sleep", 1),
                                       ("wake_up",), ("generate", 2), ("sleep", 1),  # asleep while the trainer trains
                                       ("wake_up",), ("reload_weights", n_tensors),  # awake: new weights in
                                       ("generate", 2), ("sleep", 1)]
    else:
        assert _RecordingLLM.calls == [("init", False), ("generate", 2), ("reload_weights", n_tensors), ("generate", 2)]
    assert batch.response_mask.tolist() == [[1.0], [1.0]]  # eos first: one-token answers


def test_the_cpu_build_prefills_unchunked_in_both_engines(monkeypatch):
    """Seeded sampling on vLLM's CPU build needs whole prefills (tests/test_vllm_long_prompts.py runs it); the
    rollout engine and the eval generators take the setting from one place."""
    from remax_bench.core import vllm_support
    from remax_bench.evaluation import generation

    assert vllm_support.build_engine_kwargs(cpu_build=True) == {"enable_chunked_prefill": False}
    assert vllm_support.build_engine_kwargs(cpu_build=False) == {}  # CUDA's generator rewinds: chunks stay
    monkeypatch.setattr(generation, "vllm_is_cpu_build", lambda: True)
    assert generation.vllm_engine_kwargs("ckpt")["enable_chunked_prefill"] is False
    monkeypatch.setattr(generation, "vllm_is_cpu_build", lambda: False)
    assert "enable_chunked_prefill" not in generation.vllm_engine_kwargs("ckpt")
    engine = SimpleNamespace(llm_engine=SimpleNamespace(vllm_config=SimpleNamespace(scheduler_config=SimpleNamespace(
        enable_chunked_prefill=False, max_num_batched_tokens=4096, max_num_seqs=40))))
    assert vllm_support.scheduler_record(engine) == {"enable_chunked_prefill": False, "max_num_batched_tokens": 4096,
                                                     "max_num_seqs": 40}
