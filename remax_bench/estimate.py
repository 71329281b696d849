"""Analytical GPU/CPU memory of one RLHF stage, per algorithm and per component (``remax-bench estimate``).

What is counted, per GPU (data-parallel rank), for a Llama-family decoder:

Model states (resident for the whole stage). P is a model's parameter count, N the number of ranks.
  Mixed precision (bf16) as in the ZeRO paper (Rajbhandari et al. 2020): 2 bytes of 16-bit parameters, 2 bytes
  of 16-bit gradients and 12 bytes of optimizer states (fp32 master weights + Adam's two fp32 moments) per
  parameter: 2 + 2 + 12 = 16. Plain fp32: 4 + 4 + 8. The torch engine with bf16 autocast keeps fp32 weights
  (autocast casts per op), so it is 4 + 4 + 8 too. ZeRO stage 1 divides the optimizer states by N, stage 2
  also the gradients, stage 3 also the parameters. Optimizer offload moves the optimizer states to CPU memory,
  and with them the reduced gradients (ZeRO-Offload keeps an fp32 gradient partition on the CPU, 4 bytes/param/N);
  parameter offload (stage 3) moves the parameter partitions too. Frozen models (reference, reward) hold only
  parameters; they may be ZeRO-3 sharded in inference mode and offloaded, as DeepSpeed-Chat does.

Activations of a training forward/backward (Korthikanti et al. 2022, "Reducing Activation Recomputation in
  Large Transformer Models", eq. 1): ``s*b*h*(34 + 5*a*s/h)`` bytes per layer with 16-bit activations, where
  s is the sequence length, b the micro batch, h the hidden size and a the number of heads; the ``5*a*s^2*b``
  part is the attention score matrix, which flash/SDPA kernels do not store (``flash_attention=True`` drops it).
  With full activation checkpointing only each layer's input is kept (``2*s*b*h`` per layer) plus one layer's
  full activations while it is recomputed in the backward. fp32 activations double the bytes.
No-grad scoring forwards hold one layer's intermediate tensors at a time: counted as one layer's activations
  (an upper bound on that working set).
Logits: ``b*s*V`` in the activation dtype for the LM head output plus ``b*s*V*4`` for the fp32 log-softmax kept
  for the backward (trained LMs) or used for the log-probs (scoring forwards).
Generation KV cache: ``2 * layers * kv_heads * head_dim * (prompt + response) * batch * bytes`` (K and V).
vLLM rollouts (``rollout_backend="vllm"``): every rank's engine holds its own copy of the policy's weights (16-bit
  when the suite trains in bf16, else fp32) and a KV cache sized for that rank's share of one rollout batch
  (sampled and greedy rows), in place of the transient generation cache. On GPUs the engine sleeps between
  rollouts (vLLM's sleep mode: weights to CPU memory, KV cache released), so both belong to the generate phase
  and the weights sit in CPU memory the rest of the time (``rollout_engine_sleeps``); on vLLM's CPU build, which
  has no sleep mode, both are resident for the whole stage.

Phases. Model states are always resident. The transient memory of one phase (a label per component: generate,
one scoring forward per model, the training forward/backward of each trained model) is freed before the next,
so the peak is ``states + max over phases`` (``peak="phased"``, the default, what ``max_memory_allocated``
sees). ``peak="sum"`` adds everything as if held at once: a loose upper bound.

The algorithms:
  PPO: trained policy and critic (the critic is initialised from the reward model: the reward model's shape with
  a scalar head), frozen reference and reward. Rollout batch of samples generated, scored by policy, reference,
  reward and critic; then the policy and the critic are updated one after the other (DeepSpeed-Chat's order).
  ReMax: trained policy, frozen reference and reward, no critic. It also decodes the greedy response to every
  prompt: one batched pass of 2x the rollout batch in the KV cache (default), or two sequential passes. The
  reward model scores 2x sequences.
  DPO: trained policy and frozen reference, no generation; each step processes chosen and rejected (2x sequences).
  SFT: the policy alone. Reward model: the reward model alone on chosen and rejected.

Not counted: communication buckets, allocator fragmentation, CUDA context and kernels' workspaces, the
per-layer gather of ZeRO-3 parameters, the prompt activations of the prefill, small per-token buffers (rewards,
advantages). Measured GPU peaks should therefore come out somewhat above these figures.

The ReMax paper (Li et al. 2023/ICML 2024, arXiv:2310.10505) reports that ReMax saves about 46% of GPU memory
against PPO when training Llama-2-7B (A800-80GB GPUs; actor under ZeRO-2 with gradient checkpointing, reward and
reference models under ZeRO-3 with offload; prompts and responses of up to 256 tokens). ``paper_inputs()`` is that
setup; with a per-GPU batch of 8 on 4 GPUs this model gives 45.7% (PPO 70.9 GiB, ReMax 38.5 GiB per GPU): the
saving is the critic's parameters, gradients and optimizer states (33.9 GiB), less the extra KV cache of the greedy
responses. It grows as the batch shrinks (49% at 1 per GPU) and shrinks when the frozen models stay replicated on
every GPU (34%), since they then weigh the same in both algorithms.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from remax_bench import comparison
from remax_bench.core import algorithms as registry
from remax_bench.core.vllm_support import ENGINE_KV_SLACK
from remax_bench.model_shapes import EstimateError, ModelShape, resolve_model

GIB = 1024**3
ALGORITHMS = (*registry.NAMES, *registry.PREPARATION_STAGES)
STATE_KINDS = ("params", "grads", "optimizer")


# ---------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------
@dataclass
class EstimateInputs:
    """Everything besides the model that sets the memory of a stage. Batch sizes are per GPU."""

    prompt_length: int = 256
    response_length: int = 256
    rollout_batch_per_gpu: int = 8  # prompts (or sampled answers, see rollout_batch_unit) per rank per iteration
    rollout_batch_unit: str = "prompts"  # shared.rollout_batch_unit: what rollout_batch_per_gpu counts
    samples_per_prompt: dict = field(default_factory=dict)  # k per online algorithm (absent: 1)
    rollout_backend: str = "hf"  # shared.rollout_backend: hf (generate on the policy) | vllm (a colocated engine)
    rollout_engine_sleeps: bool = True  # vLLM on GPUs sleeps between rollouts; its CPU build cannot (resident)
    train_batch_per_gpu: int = 8  # micro batch of one forward/backward (pairs for DPO and the reward model)
    precision: str = "bf16"  # bf16 | fp32
    gradient_checkpointing: bool = True
    zero_stage: int = 0
    num_gpus: int = 1
    offload_optimizer: bool = False
    offload_params: bool = False
    frozen_zero3: bool | None = None  # None: shard the frozen models when the trained ones use ZeRO-3
    offload_frozen: bool = False  # frozen ZeRO-3 partitions in CPU memory
    engine: str = "deepspeed"  # deepspeed (16-bit params + fp32 master) | torch (fp32 params, autocast)
    remax_greedy_batched: bool = True  # sample and greedy in one generate pass (2x KV cache)
    ppo_sequential_updates: bool = True  # actor then critic backward (DeepSpeed-Chat); False: both live at once
    flash_attention: bool = False  # attention kernels that do not store the s x s score matrix
    peak: str = "phased"  # phased: states + max over phases; sum: everything at once

    def __post_init__(self):
        if self.precision not in ("bf16", "fp16", "fp32"):
            raise EstimateError(f"precision must be bf16, fp16 or fp32; got {self.precision!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise EstimateError(f"zero_stage must be 0-3; got {self.zero_stage}")
        if self.engine not in ("deepspeed", "torch"):
            raise EstimateError(f"engine must be deepspeed or torch; got {self.engine!r}")
        if self.rollout_backend not in ("hf", "vllm"):
            raise EstimateError(f"rollout_backend must be hf or vllm; got {self.rollout_backend!r}")
        if self.peak not in ("phased", "sum"):
            raise EstimateError(f"peak must be phased or sum; got {self.peak!r}")
        if self.offload_params and self.zero_stage != 3:
            raise EstimateError("offload_params needs zero_stage 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise EstimateError("offload_optimizer needs zero_stage >= 1")
        for name in ("prompt_length", "response_length", "rollout_batch_per_gpu", "train_batch_per_gpu", "num_gpus"):
            if getattr(self, name) < 1:
                raise EstimateError(f"{name} must be >= 1; got {getattr(self, name)}")

    @property
    def seq_len(self) -> int:
        return self.prompt_length + self.response_length

    @property
    def shard_frozen(self) -> bool:
        return self.zero_stage == 3 if self.frozen_zero3 is None else self.frozen_zero3

    @classmethod
    def from_suite(cls, suite: Any, **overrides: Any) -> "EstimateInputs":
        """From a Suite: ``shared`` lengths, batch sizes (global, split over ``runtime.num_gpus`` ranks), precision,
        gradient checkpointing; ``runtime.deepspeed`` ZeRO stage and offload. Keyword overrides win."""
        shared, runtime = suite.shared, suite.runtime
        ds = getattr(runtime, "deepspeed", None)
        use_ds = bool(getattr(ds, "enabled", False))
        gpus = max(1, int(getattr(runtime, "num_gpus", 1) or 1)) * max(1, int(getattr(runtime, "num_nodes", 1) or 1))
        if not use_ds:
            gpus = 1  # the torch engine runs one process
        values = dict(
            prompt_length=shared.max_prompt_length,
            response_length=shared.max_response_length,
            rollout_batch_per_gpu=_per_rank(shared.rollout_batch_size, gpus, "shared.rollout_batch_size"),
            train_batch_per_gpu=_per_rank(shared.train_batch_size, gpus, "shared.train_batch_size"),
            precision=shared.precision,
            gradient_checkpointing=bool(shared.gradient_checkpointing),
            num_gpus=gpus,
            engine="deepspeed" if use_ds else "torch",
            zero_stage=int(getattr(ds, "zero_stage", 0) or 0) if use_ds else 0,
            offload_optimizer=bool(getattr(ds, "offload_optimizer", False)) if use_ds else False,
            offload_params=bool(getattr(ds, "offload_params", False)) if use_ds else False,
            rollout_batch_unit=getattr(shared, "rollout_batch_unit", "prompts"),
            rollout_backend=getattr(shared, "rollout_backend", "hf"),
            rollout_engine_sleeps=getattr(runtime, "device", "auto") != "cpu",
            samples_per_prompt={n: suite.samples_per_prompt(n) for n in registry.online()}
            if hasattr(suite, "samples_per_prompt") else {},
        )
        if use_ds:
            # Where the trainers put the frozen models (runtime.deepspeed.frozen_models).
            from remax_bench.core.deepspeed_config import frozen_placement

            placement = frozen_placement(runtime)
            values.update(frozen_zero3=placement != "replicated", offload_frozen=placement == "zero3_offload")
        values.update(overrides)
        return cls(**values)


def _per_rank(global_size: int, ranks: int, field: str) -> int:
    """The trainers' rule (remax_bench.core.config.per_rank_batch): a global batch split evenly over the ranks."""
    from remax_bench.core.config import SuiteError, per_rank_batch

    try:
        return per_rank_batch(int(global_size), ranks, field)
    except SuiteError as err:
        raise EstimateError(str(err)) from None


def paper_inputs(**overrides: Any) -> EstimateInputs:
    """The ReMax paper's Llama-2-7B setup (reference script step3 run_llama2_7b.sh, DeepSpeed-Chat style):
    4 GPUs, actor (and PPO critic) under ZeRO-2 with bf16 and gradient checkpointing, reward and reference
    models ZeRO-3 sharded and offloaded, prompts and responses of 256 tokens, 8 sequences per GPU."""
    values = dict(prompt_length=256, response_length=256, rollout_batch_per_gpu=8, train_batch_per_gpu=8,
                  precision="bf16", gradient_checkpointing=True, zero_stage=2, num_gpus=4,
                  frozen_zero3=True, offload_frozen=True)
    values.update(overrides)
    return EstimateInputs(**values)


# ---------------------------------------------------------------------------------------------------------
# The memory model
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Component:
    model: str  # policy | reference | reward | critic
    kind: str  # params | grads | optimizer | activations | logits | kv_cache | forward
    phase: str  # "states" (resident) or the transient phase it belongs to
    gpu_bytes: int
    cpu_bytes: int = 0
    note: str = ""


@dataclass
class Estimate:
    algorithm: str
    model: str
    inputs: EstimateInputs
    components: list[Component] = field(default_factory=list)
    param_counts: dict[str, int] = field(default_factory=dict)

    def phase_bytes(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for c in self.components:
            if c.phase != "states":
                totals[c.phase] = totals.get(c.phase, 0) + c.gpu_bytes
        return totals

    @property
    def peak_phase(self) -> str | None:
        phases = self.phase_bytes()
        return max(phases, key=phases.get) if phases else None

    @property
    def state_gpu_bytes(self) -> int:
        return sum(c.gpu_bytes for c in self.components if c.phase == "states")

    @property
    def gpu_bytes(self) -> int:
        """Peak GPU bytes per rank."""
        phases = self.phase_bytes()
        if self.inputs.peak == "sum":
            return self.state_gpu_bytes + sum(phases.values())
        return self.state_gpu_bytes + (max(phases.values()) if phases else 0)

    @property
    def cpu_bytes(self) -> int:
        return sum(c.cpu_bytes for c in self.components)

    def in_peak(self, c: Component) -> bool:
        return c.phase == "states" or self.inputs.peak == "sum" or c.phase == self.peak_phase

    def state_bytes(self) -> dict[str, dict[str, int]]:
        """Per model: params, grads, optimizer bytes of this rank (GPU and CPU together), like summary.json."""
        out: dict[str, dict[str, int]] = {}
        for c in self.components:
            if c.phase == "states" and c.kind in STATE_KINDS and c.model != "rollout_engine":
                out.setdefault(c.model, {k: 0 for k in STATE_KINDS})[c.kind] += c.gpu_bytes + c.cpu_bytes
        return out

    def to_frame(self) -> pd.DataFrame:
        rows = [{"algorithm": self.algorithm, **asdict(c), "in_peak": self.in_peak(c)} for c in self.components]
        return pd.DataFrame(rows, columns=["algorithm", "model", "kind", "phase", "gpu_bytes", "cpu_bytes", "note",
                                           "in_peak"])


def _precision_bytes(inputs: EstimateInputs) -> dict[str, int]:
    """Bytes per parameter (params, grads, optimizer, frozen params) and per activation / KV element."""
    half = inputs.precision in ("bf16", "fp16")
    if half and inputs.engine == "deepspeed":
        states = dict(params=2, grads=2, optimizer=12, frozen=2)  # 16-bit weights + fp32 master + 2 moments
    else:
        states = dict(params=4, grads=4, optimizer=8, frozen=4)  # fp32 weights (autocast casts per op)
    act = 2 if half else 4
    return {**states, "act": act, "kv": act}


def layer_activation_bytes(shape: ModelShape, seq: int, batch: int, inputs: EstimateInputs) -> int:
    """Korthikanti et al. 2022 eq. 1: s*b*h*(34 + 5*a*s/h) bytes per layer (16-bit), scaled for fp32."""
    s, b, h, a = seq, batch, shape.hidden_size, shape.num_heads
    per_layer_16bit = 34 * s * b * h + (0 if inputs.flash_attention else 5 * a * s * s * b)
    return per_layer_16bit * _precision_bytes(inputs)["act"] // 2


def training_activation_bytes(shape: ModelShape, seq: int, batch: int, inputs: EstimateInputs) -> int:
    """All layers' activations kept for the backward; with full checkpointing, each layer's input (2*s*b*h in
    16-bit) plus one layer's activations while it is recomputed."""
    full_layer = layer_activation_bytes(shape, seq, batch, inputs)
    if not inputs.gradient_checkpointing:
        return shape.num_layers * full_layer
    act = _precision_bytes(inputs)["act"]
    return shape.num_layers * seq * batch * shape.hidden_size * act + full_layer


def logits_bytes(shape: ModelShape, seq: int, batch: int, inputs: EstimateInputs) -> int:
    """LM-head output in the activation dtype plus the fp32 log-softmax (b*s*V*4)."""
    return batch * seq * shape.vocab_size * (_precision_bytes(inputs)["act"] + 4)


def kv_cache_bytes(shape: ModelShape, seq: int, batch: int, inputs: EstimateInputs) -> int:
    """2 (K and V) * layers * kv_heads * head_dim * tokens * batch * bytes."""
    return 2 * shape.num_layers * shape.kv_heads * shape.dim_per_head * seq * batch * _precision_bytes(inputs)["kv"]


def _trained_states(name: str, n_params: int, inputs: EstimateInputs) -> list[Component]:
    pb, n, z = _precision_bytes(inputs), inputs.num_gpus, inputs.zero_stage
    params = pb["params"] * n_params // (n if z == 3 else 1)
    grads = pb["grads"] * n_params // (n if z >= 2 else 1)
    optimizer = pb["optimizer"] * n_params // (n if z >= 1 else 1)
    out = []
    if inputs.offload_params:
        out.append(Component(name, "params", "states", 0, params, "ZeRO-3 partition offloaded"))
    else:
        out.append(Component(name, "params", "states", params, 0, f"ZeRO-{z}" if z == 3 else ""))
    if inputs.offload_optimizer:
        # ZeRO-Offload: gradients are reduced straight into an fp32 partition in CPU memory.
        out.append(Component(name, "grads", "states", 0, 4 * n_params // n, "fp32 partition offloaded"))
        out.append(Component(name, "optimizer", "states", 0, optimizer, "offloaded"))
    else:
        out.append(Component(name, "grads", "states", grads, 0, "partitioned" if z >= 2 else ""))
        out.append(Component(name, "optimizer", "states", optimizer, 0, "partitioned" if z >= 1 else ""))
    return out


def _frozen_states(name: str, n_params: int, inputs: EstimateInputs) -> list[Component]:
    pb = _precision_bytes(inputs)
    sharded = inputs.shard_frozen and inputs.engine == "deepspeed"
    params = pb["frozen"] * n_params // (inputs.num_gpus if sharded else 1)
    note = "ZeRO-3 inference" if sharded else ""
    if sharded and inputs.offload_frozen:
        return [Component(name, "params", "states", 0, params, note + ", offloaded")]
    return [Component(name, "params", "states", params, 0, note)]


def _train_phase(name: str, shape: ModelShape, seq: int, batch: int, inputs: EstimateInputs, lm: bool,
                 phase: str) -> list[Component]:
    out = [Component(name, "activations", phase, training_activation_bytes(shape, seq, batch, inputs), 0,
                     "checkpointed" if inputs.gradient_checkpointing else "all layers")]
    if lm:
        out.append(Component(name, "logits", phase, logits_bytes(shape, seq, batch, inputs)))
    return out


def _score_phase(name: str, shape: ModelShape, seq: int, batch: int, inputs: EstimateInputs, lm: bool) -> list[Component]:
    """One no-grad forward: one layer's working set at a time, plus the log-probs of an LM."""
    out = [Component(name, "forward", f"score:{name}", layer_activation_bytes(shape, seq, batch, inputs), 0,
                     f"{batch} sequences")]
    if lm:
        out.append(Component(name, "logits", f"score:{name}", logits_bytes(shape, seq, batch, inputs)))
    return out


def _rollout_engine(policy: ModelShape, n_params: int, seq: int, rows: int, inputs: EstimateInputs) -> list[Component]:
    """A colocated vLLM engine on one rank: its copy of the weights and a KV cache for this rank's ``rows`` (sampled
    and greedy, the trainers' sizing). Asleep (GPUs) they are the generate phase's and the weights wait in CPU
    memory; awake for the whole stage (the CPU build) they are resident."""
    weights = n_params * (2 if inputs.precision in ("bf16", "fp16") else 4)
    cache = int(ENGINE_KV_SLACK * kv_cache_bytes(policy, seq, rows, inputs))
    if inputs.rollout_engine_sleeps:
        return [Component("rollout_engine", "params", "generate", weights, weights,
                          "vLLM's copy of the policy; in CPU memory while it sleeps"),
                Component("rollout_engine", "kv_cache", "generate", cache, 0,
                          "vLLM's KV cache for one rollout batch; released while it sleeps")]
    return [Component("rollout_engine", "params", "states", weights, 0, "vLLM's copy of the policy"),
            Component("rollout_engine", "kv_cache", "states", cache, 0, "vLLM's KV cache for one rollout batch")]


def estimate(model_config: Any, inputs: EstimateInputs, algorithm: str, reward_config: Any = None) -> Estimate:
    """Per-GPU memory of ``algorithm`` (ppo, remax, dpo, sft, reward_model) for a policy of ``model_config``;
    the reward model (and PPO's critic) has ``reward_config``'s shape (default: the policy's)."""
    if algorithm not in ALGORITHMS:
        raise EstimateError(f"algorithm must be one of {ALGORITHMS}; got {algorithm!r}")
    policy = resolve_model(model_config)
    reward = resolve_model(reward_config) if reward_config is not None else policy
    s, gen_b, train_b = inputs.seq_len, inputs.rollout_batch_per_gpu, inputs.train_batch_per_gpu
    n_lm, n_rm = policy.num_params("lm"), reward.num_params("scalar")
    result = Estimate(algorithm, policy.name, inputs)
    add = result.components.extend

    if algorithm == "sft":
        result.param_counts = {"policy": n_lm}
        add(_trained_states("policy", n_lm, inputs))
        add(_train_phase("policy", policy, s, train_b, inputs, lm=True, phase="train"))
    elif algorithm == "reward_model":
        result.param_counts = {"reward": n_rm}
        add(_trained_states("reward", n_rm, inputs))
        add(_train_phase("reward", reward, s, 2 * train_b, inputs, lm=False, phase="train"))
    elif registry.get(algorithm).preference_data:  # DPO: policy and reference on chosen + rejected
        result.param_counts = {"policy": n_lm, "reference": n_lm}
        add(_trained_states("policy", n_lm, inputs))
        add(_frozen_states("reference", n_lm, inputs))
        add(_score_phase("reference", policy, s, 2 * train_b, inputs, lm=True))
        add(_train_phase("policy", policy, s, 2 * train_b, inputs, lm=True, phase="train"))
    else:  # online algorithms: one rollout engine, with or without a critic and a greedy baseline
        spec = registry.get(algorithm)
        greedy, critic = spec.greedy_baseline, spec.critic
        # k sampled answers per prompt: gen_b counts prompts, or sampled answers (gen_b / k prompts).
        k = inputs.samples_per_prompt.get(algorithm, 1)
        prompts = gen_b if inputs.rollout_batch_unit == "prompts" else max(1, gen_b // k)
        gen_b = prompts * k
        result.param_counts = {"policy": n_lm, "reference": n_lm, "reward": n_rm}
        add(_trained_states("policy", n_lm, inputs))
        if critic:
            result.param_counts["critic"] = n_rm
            add(_trained_states("critic", n_rm, inputs))
        add(_frozen_states("reference", n_lm, inputs))
        add(_frozen_states("reward", n_rm, inputs))
        if inputs.rollout_backend == "vllm":
            add(_rollout_engine(policy, n_lm, s, gen_b + (prompts if greedy else 0), inputs))
        elif greedy and inputs.remax_greedy_batched:
            add([Component("policy", "kv_cache", "generate", kv_cache_bytes(policy, s, gen_b + prompts, inputs), 0,
                           "sampled + greedy in one pass")])
        else:
            add([Component("policy", "kv_cache", "generate", kv_cache_bytes(policy, s, gen_b, inputs), 0,
                           "sampled" + (", then greedy" if greedy else ""))])
        add(_score_phase("policy", policy, s, gen_b, inputs, lm=True))
        add(_score_phase("reference", policy, s, gen_b, inputs, lm=True))
        add(_score_phase("reward", reward, s, gen_b + (prompts if greedy else 0), inputs, lm=False))
        if critic:
            add(_score_phase("critic", reward, s, gen_b, inputs, lm=False))
        sequential = not critic or inputs.ppo_sequential_updates
        add(_train_phase("policy", policy, s, train_b, inputs, lm=True, phase="train:policy" if sequential else "train"))
        if critic:
            add(_train_phase("critic", reward, s, train_b, inputs, lm=False,
                             phase="train:critic" if sequential else "train"))
    return result


def estimate_table(model: Any, inputs: EstimateInputs, algorithms: Iterable[str] = registry.NAMES,
                   reward: Any = None) -> pd.DataFrame:
    """Rows: algorithm x component (model, kind, phase) with GPU and CPU bytes and whether it is in the peak."""
    frames = [estimate(model, inputs, a, reward).to_frame() for a in algorithms]
    return pd.concat(frames, ignore_index=True)


def remax_saving(ppo: Estimate, remax: Estimate) -> dict[str, Any]:
    """ReMax's GPU saving against PPO, and where it comes from: the difference, component by component, of
    what each algorithm holds at its peak (positive: PPO holds more)."""
    if ppo.algorithm != registry.BASELINE or remax.algorithm != registry.FOCUS:
        raise EstimateError("remax_saving(ppo_estimate, remax_estimate)")

    def at_peak(est: Estimate) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for c in est.components:
            if est.in_peak(c):
                key = (c.model, c.kind if c.phase == "states" else f"{c.kind} ({c.phase})")
                out[key] = out.get(key, 0) + c.gpu_bytes
        return out

    p, r = at_peak(ppo), at_peak(remax)
    parts = {f"{m} {k}": p.get((m, k), 0) - r.get((m, k), 0) for (m, k) in sorted(set(p) | set(r))}
    parts = {k: v for k, v in parts.items() if v != 0}
    return {
        "ppo_gpu_bytes": ppo.gpu_bytes,
        "remax_gpu_bytes": remax.gpu_bytes,
        "saving_bytes": ppo.gpu_bytes - remax.gpu_bytes,
        "saving_fraction": comparison.saving(remax.gpu_bytes, ppo.gpu_bytes),
        "ppo_peak_phase": ppo.peak_phase,
        "remax_peak_phase": remax.peak_phase,
        "breakdown_bytes": parts,
    }


def _gib(n: float) -> str:
    return f"{n / GIB:8.2f}"


def format_estimate(model: Any, inputs: EstimateInputs, algorithms: Sequence[str] = registry.NAMES,
                    reward: Any = None) -> str:
    """A table in GiB per GPU (components x algorithms), the totals, and the ReMax-vs-PPO saving explained."""
    estimates = {a: estimate(model, inputs, a, reward) for a in algorithms}
    first = next(iter(estimates.values()))
    policy = resolve_model(model)
    rm = resolve_model(reward) if reward is not None else policy
    lines = [
        f"model {policy.name}: {policy.num_params('lm') / 1e9:.3f}B params (LM); reward/critic {rm.name}: "
        f"{rm.num_params('scalar') / 1e9:.3f}B (scalar head)",
        f"per GPU: {inputs.num_gpus} GPU(s), engine {inputs.engine}, ZeRO-{inputs.zero_stage}, {inputs.precision}, "
        f"gradient checkpointing {'on' if inputs.gradient_checkpointing else 'off'}, offload optimizer "
        f"{inputs.offload_optimizer} / params {inputs.offload_params}; frozen models "
        f"{'ZeRO-3 sharded' if first.inputs.shard_frozen and inputs.engine == 'deepspeed' else 'replicated'}"
        f"{' + offloaded' if inputs.offload_frozen and first.inputs.shard_frozen else ''}",
        f"prompt {inputs.prompt_length} + response {inputs.response_length} tokens, rollout batch "
        f"{inputs.rollout_batch_per_gpu}/GPU, train micro batch {inputs.train_batch_per_gpu}/GPU, peak = "
        f"{'states + largest phase' if inputs.peak == 'phased' else 'sum of everything'}",
        "",
    ]
    keys: list[tuple[str, str, str]] = []
    for est in estimates.values():
        for c in est.components:
            key = (c.model, c.kind, c.phase)
            if key not in keys:
                keys.append(key)
    width = max(len(f"{m} {k} [{p}]") for m, k, p in keys) + 2

    def cell(est: Estimate, key: tuple[str, str, str], cpu: bool) -> str:
        match = [c for c in est.components if (c.model, c.kind, c.phase) == key]
        if not match:
            return "-".rjust(13) + " "
        value = match[0].cpu_bytes if cpu else match[0].gpu_bytes
        return _gib(value).strip().rjust(13) + ("*" if not cpu and est.in_peak(match[0]) else " ")

    header = "GPU, GiB per rank".ljust(width) + "".join(a.rjust(13) + " " for a in estimates)
    lines += [header + "  (* = held at the peak)", "-" * len(header)]
    for key in keys:
        lines.append(f"{key[0]} {key[1]} [{key[2]}]".ljust(width) + "".join(cell(e, key, False) for e in estimates.values()))
    lines.append("-" * len(header))
    lines.append("peak".ljust(width) + "".join(_gib(e.gpu_bytes).strip().rjust(13) + " " for e in estimates.values()))
    lines.append("  model states".ljust(width)
                 + "".join(_gib(e.state_gpu_bytes).strip().rjust(13) + " " for e in estimates.values()))
    lines.append("  peak phase".ljust(width) + "".join((e.peak_phase or "-").rjust(13) + " " for e in estimates.values()))
    cpu_keys = [k for k in keys if any(c.cpu_bytes for e in estimates.values() for c in e.components
                                       if (c.model, c.kind, c.phase) == k)]
    if cpu_keys:
        lines += ["", "CPU, GiB per rank (offloaded)".ljust(width) + "".join(a.rjust(13) + " " for a in estimates)]
        for key in cpu_keys:
            lines.append(f"{key[0]} {key[1]}".ljust(width) + "".join(cell(e, key, True) for e in estimates.values()))
        lines.append("total".ljust(width) + "".join(_gib(e.cpu_bytes).strip().rjust(13) + " " for e in estimates.values()))
    if registry.BASELINE in estimates and registry.FOCUS in estimates:
        saving = remax_saving(estimates[registry.BASELINE], estimates[registry.FOCUS])
        lines += [
            "",
            f"ReMax vs PPO: {100 * saving['saving_fraction']:.1f}% less GPU memory "
            f"({saving['ppo_gpu_bytes'] / GIB:.2f} -> {saving['remax_gpu_bytes'] / GIB:.2f} GiB per GPU; "
            f"peaks in {saving['ppo_peak_phase']} / {saving['remax_peak_phase']}). Where it comes from:",
        ]
        for name, delta in sorted(saving["breakdown_bytes"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  {'+' if delta > 0 else '-'} {abs(delta) / GIB:7.2f} GiB  {name}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Estimated vs measured
# ---------------------------------------------------------------------------------------------------------
_ALIASES = {"actor": "policy", "ref": "reference", "reward_model": "reward", "rm": "reward", "value": "critic",
            "value_model": "critic"}


def compare_measured(est: Estimate, measured_summary: dict | str | Path) -> pd.DataFrame:
    """Estimated vs measured bytes: each model's params / grads / optimizer, their total, and the peak.

    ``measured_summary`` is a stage's summary.json (dict or path) with ``model_state_bytes`` and
    ``peak_memory_bytes``. ``rel_error = (estimated - measured) / measured``. On CPU the measured peak is the
    RSS above the baseline (``memory_kind``), which also holds allocator slack and the Python heap.
    """
    if not isinstance(measured_summary, dict):
        import json

        measured_summary = json.loads(Path(measured_summary).read_text())
    measured_states = {_ALIASES.get(k, k): v for k, v in (measured_summary.get("model_state_bytes") or {}).items()}
    estimated_states = est.state_bytes()
    rows = []
    for model in sorted(set(estimated_states) | set(measured_states)):
        for kind in STATE_KINDS:
            e = estimated_states.get(model, {}).get(kind, 0)
            m = (measured_states.get(model) or {}).get(kind)
            rows.append({"model": model, "kind": kind, "estimated_bytes": e, "measured_bytes": m})
    rows.append({"model": "all", "kind": "model_states",
                 "estimated_bytes": sum(sum(v.values()) for v in estimated_states.values()),
                 "measured_bytes": sum(sum(v.get(k, 0) for k in STATE_KINDS) for v in measured_states.values())
                 if measured_states else None})
    rows.append({"model": "all", "kind": f"peak ({measured_summary.get('memory_kind', 'measured')})",
                 "estimated_bytes": est.gpu_bytes, "measured_bytes": measured_summary.get("peak_memory_bytes")})
    frame = pd.DataFrame(rows)
    measured = pd.to_numeric(frame["measured_bytes"], errors="coerce")
    frame["rel_error"] = (frame["estimated_bytes"] - measured) / measured.where(measured > 0)
    return frame
