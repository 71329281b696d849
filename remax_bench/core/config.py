"""Suite configs: one YAML names the models, the data, the settings every algorithm shares, and what is
specific to each algorithm. Validated with pydantic; every problem becomes one clear ``SuiteError``.

"Matched" means PPO, DPO and ReMax read the same ``shared:`` block unchanged. An algorithm block may only
add what is specific to that algorithm; one that sets a key of ``shared:`` is rejected.

Reading a suite file (YAML, messages) is ``remax_bench.core.suite_file``; this module is the schema.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from remax_bench.core import algorithms, sweep
from remax_bench.core.schema import Strict
from remax_bench.core.slurm_config import Slurm
from remax_bench.core.trackers import NAMES as TRACKER_NAMES

# The named suites (`remax-bench run tiny`). They ship inside the package: in a checkout remax_bench/suites links
# to the repository's suites/ (their source), in an installed wheel it holds copies.
SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"


class SuiteError(ValueError):
    """A suite that cannot be used; the message names the field, what was expected and what was given."""


# -- models and data -------------------------------------------------------------------------------
class Models(Strict):
    policy: str = Field(description="tiny:<preset> spec, Hugging Face id or local path")
    reward: Optional[str] = Field(
        default=None, description="base of the reward model; default: initialised from the SFT model"
    )

    @field_validator("policy")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("a model is required (a tiny: spec, a Hugging Face id or a local path), got ''")
        return v


class DataSource(Strict):
    source: str = Field(description="'synthetic', a local .jsonl/.json/.parquet path, or a HF dataset id")
    split: str = "train"
    subset: Optional[str] = None
    max_examples: Optional[int] = Field(default=None, gt=0)
    layout: Literal["auto", "plain", "hh", "ultrafeedback"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `sft: synthetic` is short for `sft: {source: synthetic}`
        return {"source": value} if isinstance(value, str) else value


class SyntheticData(Strict):
    seed: int = 1234
    tasks: Optional[list[str]] = None  # None: every task of remax_bench.core.task.TASKS
    n_sft: int = Field(default=4000, gt=0)
    n_pairs: int = Field(default=3000, gt=0)
    n_prompts: int = Field(default=2000, gt=0)
    n_eval: int = Field(default=128, gt=0)
    demo_noise: float = Field(default=0.3, ge=0, le=1)


class Data(Strict):
    synthetic: SyntheticData = SyntheticData()
    # sft, preferences and prompts may be null when no planned stage reads them (checked in Suite).
    sft: Optional[DataSource] = DataSource(source="synthetic")
    preferences: Optional[DataSource] = DataSource(source="synthetic")
    prompts: Optional[DataSource] = DataSource(source="synthetic")
    eval_prompts: DataSource = DataSource(source="synthetic")


# -- the matched block -----------------------------------------------------------------------------
class Generation(Strict):
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)  # 0: no top-k filtering


class Shared(Strict):
    max_prompt_length: int = Field(gt=0, description="prompt tokens at most (longer prompts are dropped, named)")
    max_response_length: int = Field(gt=0, description="T: generated (or trained) response tokens at most")
    rollout_batch_size: int = Field(gt=0, description="global prompts (or samples) per iteration, over all ranks")
    # What rollout_batch_size counts when algorithms draw different numbers k of answers per prompt:
    # "prompts": every algorithm sees the same prompts per iteration and one with k > 1 generates k times the
    # tokens; "samples": every algorithm generates the same number of sampled answers per iteration, from
    # rollout_batch_size / k prompts, so generated tokens (and a token_budget) are held equal.
    rollout_batch_unit: Literal["prompts", "samples"] = "prompts"
    train_batch_size: int = Field(gt=0, description="global rows per optimizer step, split across ranks")
    learning_rate: float = Field(gt=0, description="eta: the policy's AdamW learning rate (constant)")
    iterations: Optional[int] = Field(default=None, gt=0, description="iterations of every algorithm, or:")
    token_budget: Optional[int] = Field(default=None, gt=0,
                                        description="generated tokens (at the length limit) every algorithm may spend")
    kl_coef: float = Field(default=0.05, ge=0, description="beta: the weight of the KL regularisation")
    # Where the KL acts and which estimator, the same for every online algorithm (core/algorithms.py: KL); an
    # algorithm block's kl_override departs from it, and the comparison is then flagged as not matched.
    kl: algorithms.KL = algorithms.KL()
    generation: Generation = Generation()
    # The engine that generates every online algorithm's rollouts: transformers' generate on the policy
    # itself, or a vLLM engine in the trainer's process that takes the policy's weights after each optimizer
    # step (trainers/vllm_rollout.py). The trainer recomputes every log-prob the loss uses, either way.
    rollout_backend: Literal["hf", "vllm"] = "hf"
    precision: Literal["fp32", "bf16"] = "fp32"
    gradient_checkpointing: bool = False
    reward_clip: Optional[float] = Field(default=5.0, gt=0, description="c: scores (ReMax: r - b) clipped to +-c")
    reward_normalize: bool = Field(default=False, description="standardise scores with running statistics")
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: Optional[float] = Field(default=1.0, gt=0, description="gradients clipped to this global norm")
    heldout_eval_every: int = Field(default=0, ge=0)  # 0: only at the end
    # A verifiable reward for the online algorithms instead of the learned reward model: "gold" (the synthetic
    # task's scorer) or "pkg.module:function" taking (prompt: str, response: str) and returning a number.
    reward_function: Optional[str] = None

    @field_validator("reward_function")
    @classmethod
    def _reward_function(cls, spec: Optional[str]) -> Optional[str]:
        if spec is not None:
            from remax_bench.core.rewards import RewardFunctionError, load_reward_function

            try:
                load_reward_function(spec)
            except RewardFunctionError as err:
                raise ValueError(str(err)) from None
        return spec

    @model_validator(mode="after")
    def _one_budget(self) -> "Shared":
        if self.iterations is None and self.token_budget is None:
            raise ValueError("iterations: set exactly one of shared.iterations and shared.token_budget (got neither)")
        if self.iterations is not None and self.token_budget is not None:
            raise ValueError(
                "iterations: set exactly one of shared.iterations and shared.token_budget "
                f"(got both: iterations={self.iterations}, token_budget={self.token_budget})"
            )
        return self

    def resolved_iterations(self) -> int:
        """Iterations every algorithm runs. A token budget counts generated tokens at the length limit:
        ceil(token_budget / (rollout_batch_size * max_response_length)), the same for every algorithm."""
        if self.iterations is not None:
            return self.iterations
        return math.ceil(self.token_budget / (self.rollout_batch_size * self.max_response_length))


def _shared_scalar_fields() -> set[str]:
    """The shared fields a sweep may list values for: every one that is not a block of its own (kl, generation)."""
    return {name for name, info in Shared.model_fields.items()
            if not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel))}


def _located(error: dict, field: str) -> str:
    """One pydantic error of a sweep's variant, with its field unless that is the swept field itself."""
    where = ".".join(str(p) for p in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    return message if where in ("", field) else f"{where}: {message}"


# -- stages and algorithms -------------------------------------------------------------------------
class SFTStage(Strict):
    path: Optional[str] = Field(default=None, description="use this checkpoint instead of training")
    epochs: int = Field(default=1, gt=0)
    max_steps: Optional[int] = Field(default=None, gt=0)
    learning_rate: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=64, gt=0)
    eval_fraction: float = Field(default=0.1, gt=0, lt=1)


class RewardModelStage(SFTStage):
    learning_rate: float = Field(default=5e-4, gt=0)


# -- evaluation ------------------------------------------------------------------------------------
class EvalGeneration(Strict):
    max_new_tokens: int = Field(default=64, gt=0)
    temperature: float = Field(default=0.0, ge=0)  # 0: greedy
    top_p: float = Field(default=1.0, gt=0, le=1)
    batch_size: int = Field(default=16, gt=0)


class AlpacaEvalConfig(Strict):
    enabled: bool = True
    prompts: str = "synthetic"  # "synthetic" | "default" (the public 805 instructions) | a local path
    max_instances: Optional[int] = Field(default=None, gt=0)
    # With an LLM judge (openai, vllm_local): alpaca_eval's own annotator config by name, pointed at the judge's
    # endpoint; the leaderboard's is weighted_alpaca_eval_gpt4_turbo. null: remax-bench's own pairwise prompt.
    annotator: Optional[str] = "weighted_alpaca_eval_gpt4_turbo"


class MTBenchConfig(Strict):
    enabled: bool = True
    questions: str = "synthetic"  # "synthetic" | "default" (the public 80 questions) | a local path
    judge_prompts: str = "default"  # "default" (FastChat's judge prompts) | a local .jsonl path
    # "fastchat": FastChat's per-category temperatures (writing/roleplay 0.7, stem/humanities 0.1, extraction/
    # math/coding/reasoning 0.0, others 0.7), as the leaderboard's answers were made; or one number for all.
    temperature: Union[Literal["fastchat"], float] = "fastchat"
    max_questions: Optional[int] = Field(default=None, gt=0)


class Judge(Strict):
    type: Literal["gold", "openai", "vllm_local", "reward_model"] = "gold"
    model: Optional[str] = None
    base_url: Optional[str] = None
    api_key_env: str = "OPENAI_API_KEY"  # the name of the variable; the key itself is never part of a suite
    max_retries: int = Field(default=3, ge=0)
    timeout_s: float = Field(default=60.0, gt=0)
    port: int = Field(default=8011, gt=0, lt=65536)  # vllm_local: `vllm serve` listens on 127.0.0.1:port
    serve_args: list[str] = []

    @model_validator(mode="after")
    def _needs_model(self) -> "Judge":
        if self.type in ("openai", "vllm_local") and not self.model:
            raise ValueError(
                f"model: a judge of type {self.type!r} needs eval.judge.model (the judge model's name), got null"
            )
        return self


class VLLMEngine(Strict):
    """Memory of a vLLM engine: a share of GPU memory on GPUs; on the CPU build, GiB of KV cache (vLLM reads
    VLLM_CPU_KVCACHE_SPACE there instead of a GPU fraction)."""

    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1, description="share of the GPU's memory")
    cpu_kv_cache_gib: int = Field(default=2, gt=0, description="KV cache of the CPU build, whole GiB")
    max_model_len: Optional[int] = Field(default=None, gt=0,
                                         description="context length; null: the model's max_position_embeddings")


class Eval(Strict):
    enabled: bool = True
    backend: Literal["auto", "vllm", "hf"] = "auto"
    vllm: VLLMEngine = VLLMEngine()
    reference: str = "sft"  # the stage (or checkpoint path) every policy is compared against
    generation: EvalGeneration = EvalGeneration()
    alpaca_eval: AlpacaEvalConfig = AlpacaEvalConfig()
    mt_bench: MTBenchConfig = MTBenchConfig()
    judge: Judge = Judge()
    conversation_template: Optional[str] = None  # FastChat template name; None: the tokenizer's chat template
    bootstrap_samples: int = Field(default=1000, gt=0)
    # The largest share of one checkpoint's AlpacaEval pairs or MT-bench turns that may stay unjudged (the judge
    # failed or gave no verdict) for its figures to count; above it the eval stage fails and writes no figure.
    max_unjudged_fraction: float = Field(default=0.02, ge=0, le=1)


# -- runtime ---------------------------------------------------------------------------------------
class DeepSpeed(Strict):
    enabled: bool = False
    zero_stage: int = Field(default=0, ge=0, le=3)
    offload_optimizer: bool = False
    offload_params: bool = False
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    # Where the frozen reference and reward models live: "replicated" (whole on every rank), "zero3"
    # (parameters partitioned over the ranks, gathered layer by layer; DeepSpeed-Chat's inference engine),
    # "zero3_offload" (those partitions in CPU memory). "auto": zero3 when the trained models use ZeRO-3
    # (offloaded with offload_params), replicated otherwise.
    frozen_models: Literal["auto", "replicated", "zero3", "zero3_offload"] = "auto"

    @property
    def frozen_placement(self) -> str:
        """frozen_models with "auto" resolved."""
        if self.frozen_models != "auto":
            return self.frozen_models
        if self.enabled and self.zero_stage == 3:
            return "zero3_offload" if self.offload_params else "zero3"
        return "replicated"

    @model_validator(mode="after")
    def _offload(self) -> "DeepSpeed":
        if self.frozen_models in ("zero3", "zero3_offload") and not self.enabled:
            raise ValueError(f"frozen_models: {self.frozen_models!r} needs runtime.deepspeed.enabled (got false)")
        # DeepSpeed's own config says optimizer offload is valid with ZeRO stages 1, 2 and 3
        # (deepspeed/runtime/zero/offload_config.py); only ZeRO-3 partitions parameters, so only it offloads them.
        if self.offload_optimizer and (not self.enabled or self.zero_stage < 1):
            raise ValueError(
                "offload_optimizer: needs runtime.deepspeed.enabled and zero_stage >= 1 "
                f"(got enabled={_yaml_scalar(self.enabled)}, zero_stage={self.zero_stage})"
            )
        if self.offload_params and (not self.enabled or self.zero_stage != 3):
            raise ValueError(
                "offload_params: needs runtime.deepspeed.enabled and zero_stage 3 "
                f"(got enabled={_yaml_scalar(self.enabled)}, zero_stage={self.zero_stage})"
            )
        return self


TrackerName = Literal[TRACKER_NAMES]


class Throughput(Strict):
    """Seconds of wall-clock time per example that each stage takes on this suite's hardware (all its ranks
    together), and where the figures come from; `remax-bench estimate --suite` turns them into hours. An
    example is what a stage's batch counts: a prompt for the online algorithms, a preference pair for DPO and
    the reward model, a demonstration for SFT. Nothing trains differently for it."""

    seconds_per_example: dict[str, float] = Field(description="stage name -> seconds per example, > 0")
    source: str = Field(min_length=1, description="where the figures come from (a paper, a run, a machine)")

    @field_validator("seconds_per_example")
    @classmethod
    def _known_stages(cls, value: dict[str, float]) -> dict[str, float]:
        stages = (*algorithms.PREPARATION_STAGES, *algorithms.NAMES)
        unknown = sorted(set(value) - set(stages))
        if unknown:
            raise ValueError(f"unknown stage(s) {', '.join(unknown)}; expected some of {', '.join(stages)}")
        bad = {k: v for k, v in value.items() if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v))}
        if bad:
            raise ValueError(f"seconds per example must be positive numbers, got {bad}")
        return value


class Runtime(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_gpus: int = Field(default=1, ge=0)
    num_nodes: int = Field(default=1, gt=0)
    hostfile: Optional[str] = None
    master_port: int = Field(default=29500, gt=0, lt=65536)
    # How long a rank waits in a collective (gradient reduce, ZeRO gather) for the others before it fails the
    # stage: a rank that died where the launcher cannot see it (another node) must not leave the rest waiting.
    collective_timeout_s: int = Field(default=1800, gt=0)
    # Mid-stage checkpoints of the whole training state (remax_bench/core/checkpoint.py), written when either is
    # due; a stop signal (SIGTERM, SIGUSR1) writes one at the end of the current iteration whatever these say.
    # The clock is the default: an hour bounds the work an unannounced failure loses, at a write cost under 0.1%
    # of the time for a 25M-parameter model and ~2.5% for a 7B PPO (README: "Checkpoints and resume").
    checkpoint_every: Optional[int] = Field(default=None, gt=0,
                                            description="iterations between checkpoints; null: by the clock only")
    checkpoint_interval_s: Optional[int] = Field(default=3600, gt=0,
                                                 description="seconds of training between checkpoints; null: off")
    keep_checkpoints: int = Field(default=2, gt=0, description="the newest checkpoints kept (the one before the "
                                  "newest is the fallback when the newest is found corrupt)")
    deepspeed: DeepSpeed = DeepSpeed()
    # Live views of every stage (remax_bench/core/trackers.py). TensorBoard by default: a few files under the
    # results folder, no service, no account, no network, and a tenth of a second to import.
    trackers: list[TrackerName] = Field(default=["tensorboard"], description="any of tensorboard, wandb, mlflow; [] for none")
    # Time per example of each stage on this hardware, with its source: what `remax-bench estimate` costs a
    # run at when no measured run is given. Read by nothing that trains.
    throughput: Optional[Throughput] = None
    # Where the stages run: processes on this machine (`run --jobs N` at once), or one Slurm job per stage.
    executor: Literal["local", "slurm"] = "local"
    slurm: Slurm = Slurm()

    @field_validator("trackers")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError(f"expected each tracker at most once, got {names}")
        return names

    @model_validator(mode="after")
    def _multi_node(self) -> "Runtime":
        if self.num_nodes > 1 and not self.hostfile and self.executor == "local":
            # Slurm places a job's nodes itself; the deepspeed launcher reads them from a hostfile.
            raise ValueError(f"hostfile: runtime.num_nodes > 1 needs runtime.hostfile, or runtime.executor: slurm "
                             f"(got num_nodes={self.num_nodes}, hostfile null)")
        if (self.num_nodes > 1 or self.num_gpus > 1) and not self.deepspeed.enabled:
            raise ValueError(
                "deepspeed.enabled: several GPUs or nodes run through the DeepSpeed launcher; set "
                f"runtime.deepspeed.enabled: true (got num_gpus={self.num_gpus}, num_nodes={self.num_nodes})"
            )
        return self

    @property
    def data_parallel_size(self) -> int:
        """Ranks that split every global batch: one per GPU (or CPU process) on every node, under DeepSpeed."""
        if not self.deepspeed.enabled:
            return 1
        return max(1, self.num_gpus) * self.num_nodes


# Every batch size of a suite is global (the paper's tables give global sizes); each data-parallel rank
# takes an equal share of it.
GLOBAL_BATCH_FIELDS = ("shared.rollout_batch_size", "shared.train_batch_size", "sft.batch_size",
                       "reward_model.batch_size")


def per_rank_batch(global_size: int, world_size: int, field: str) -> int:
    """A global batch size split over ``world_size`` data-parallel ranks; a SuiteError when it does not divide."""
    if world_size < 1 or global_size % world_size:
        raise SuiteError(
            f"{field}: a global batch size must split evenly over the {world_size} data-parallel ranks "
            f"(runtime.num_gpus x runtime.num_nodes); got {global_size}, which leaves "
            f"{global_size % max(world_size, 1)} over"
        )
    return global_size // world_size


# -- the suite -------------------------------------------------------------------------------------
class _SuiteHead(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    models: Models
    data: Data = Data()
    shared: Shared
    sft: SFTStage = SFTStage()
    reward_model: RewardModelStage = RewardModelStage()


# One block per registered algorithm (`ppo:`, `remax:`, `dpo:`, ...), each with the schema its registry entry
# names, so that a new algorithm needs no edit here.
_AlgorithmBlocks = create_model(
    "_AlgorithmBlocks", __base__=_SuiteHead,
    **{a.name: (a.block, a.block()) for a in algorithms.REGISTRY.values()},
)


class Suite(_AlgorithmBlocks):
    eval: Eval = Eval()
    runtime: Runtime = Runtime()
    seeds: list[int] = [0]
    # Several values of a shared scalar field, each a run of every algorithm (core/sweep.py). Written in a suite
    # file as a list in place (`shared: {kl_coef: [0.05, 0.1, 0.2]}`), kept here with the first value in place.
    sweep: dict[str, list[Any]] = Field(default={}, description="shared field -> its values, each a run of every "
                                        "algorithm")

    @model_validator(mode="before")
    @classmethod
    def _fold_sweep_lists(cls, data: Any) -> Any:
        return sweep.fold_lists(data, _shared_scalar_fields())

    @model_validator(mode="after")
    def _sweep_values(self) -> "Suite":
        errors = sweep.check(self.sweep, _shared_scalar_fields())
        if errors:
            raise ValueError("\n".join(errors))
        if self.sweep:
            for field, values in self.sweep.items():
                for value in values:
                    try:
                        sweep.variants(self.model_copy(update={"sweep": {field: [value]}}))
                    except ValidationError as err:
                        inner = "; ".join(_located(e, field) for e in err.errors())
                        raise ValueError(f"{field}: the sweep's value {sweep.format_value(value)} is not valid: "
                                         f"{inner}") from None
        return self

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("expected at least one seed, got []")
        if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"expected distinct integers >= 0, got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _cross_checks(self) -> "Suite":
        errors = []
        enabled = self.enabled_algorithms()
        if not enabled:
            names = ", ".join(algorithms.NAMES)
            errors.append(f"{algorithms.NAMES[0]}.enabled: enable at least one of {names} (got all disabled)")
        judge = self.eval.judge.type
        if self.eval.enabled and judge == "gold":
            # The gold scorer recomputes the synthetic task's answer; it cannot grade any other instruction.
            gold_only = "eval.judge.type 'gold' scores the synthetic task only"
            if self.data.eval_prompts.source != "synthetic":
                errors.append(f"data.eval_prompts: {gold_only}: set data.eval_prompts to synthetic or choose "
                              f"another judge (got {self.data.eval_prompts.source!r})")
            if self.eval.alpaca_eval.enabled and self.eval.alpaca_eval.prompts != "synthetic":
                errors.append(f"eval.alpaca_eval.prompts: {gold_only}: expected 'synthetic' "
                              f"(got {self.eval.alpaca_eval.prompts!r})")
            if self.eval.mt_bench.enabled and self.eval.mt_bench.questions != "synthetic":
                errors.append(f"eval.mt_bench.questions: {gold_only}: expected 'synthetic' "
                              f"(got {self.eval.mt_bench.questions!r})")
        # Each data source that a planned stage trains on must be given (the plan is runner.plan's).
        needs_reward_model = self.needs_reward_model_stage()
        readers = {
            "sft": ["the sft stage"] if self.sft.path is None else [],
            "preferences": algorithms.needing_preferences(enabled)
            + (["the reward_model stage"] if needs_reward_model and self.reward_model.path is None else []),
            "prompts": algorithms.online(enabled),
        }
        for source, users in readers.items():
            if users and getattr(self.data, source) is None:
                errors.append(f"data.{source}: needed by {' and '.join(users)}; expected a data source, got null")
        world = self.runtime.data_parallel_size
        for field in GLOBAL_BATCH_FIELDS:
            try:
                per_rank_batch(self.batch_size(field), world, field)
            except SuiteError as err:
                errors.append(str(err))
        errors.extend(self._budget_errors(enabled))
        if self.shared.reward_function == "gold" and self.data.prompts is not None \
                and self.data.prompts.source != "synthetic" and algorithms.online(enabled):
            errors.append("shared.reward_function: 'gold' scores the synthetic task only; set data.prompts to "
                          f"synthetic or name another function (got data.prompts {self.data.prompts.source!r})")
        if errors:
            raise ValueError("\n".join(errors))
        return self

    def batch_size(self, field: str) -> int:
        """A global batch size by its dotted name, e.g. ``shared.train_batch_size``."""
        block, name = field.split(".")
        return int(getattr(getattr(self, block), name))

    def _budget_errors(self, enabled: list[str]) -> list[str]:
        errors, shared = [], self.shared
        ks = {name: self.samples_per_prompt(name) for name in algorithms.online(enabled)}
        if shared.rollout_batch_unit == "samples":
            for name, k in ks.items():
                if shared.rollout_batch_size % k:
                    errors.append(f"shared.rollout_batch_size: with rollout_batch_unit 'samples' it must be a multiple "
                                  f"of {name}.samples_per_prompt={k} (got {shared.rollout_batch_size})")
        elif shared.token_budget is not None and len(set(ks.values())) > 1:
            listed = ", ".join(f"{n}.samples_per_prompt={k}" for n, k in ks.items())
            errors.append(f"shared.rollout_batch_unit: a token_budget holds generated tokens equal only when every "
                          f"algorithm generates as many answers per iteration; with {listed} set "
                          f"shared.rollout_batch_unit: samples (got 'prompts')")
        return errors

    def samples_per_prompt(self, name: str) -> int:
        return algorithms.samples_per_prompt(getattr(self, name))

    def prompts_per_iteration(self, name: str) -> int:
        """Prompts an online algorithm draws per iteration under shared.rollout_batch_unit."""
        if self.shared.rollout_batch_unit == "samples":
            return self.shared.rollout_batch_size // self.samples_per_prompt(name)
        return self.shared.rollout_batch_size

    def matched_budget(self, name: str) -> dict:
        """What one iteration of an online algorithm consumes, as recorded in its manifest and summary."""
        k, prompts = self.samples_per_prompt(name), self.prompts_per_iteration(name)
        return {"rollout_batch_unit": self.shared.rollout_batch_unit, "samples_per_prompt": k,
                "prompts_per_iteration": prompts, "samples_per_iteration": k * prompts,
                "greedy_per_iteration": prompts if algorithms.get(name).greedy_baseline else 0,
                "iterations": self.iterations, "reward": self.shared.reward_function or "reward model"}

    def kl_treatment(self, name: str) -> algorithms.KL:
        """The KL regularisation an online algorithm trains with: shared.kl, unless its block overrides it."""
        override = getattr(getattr(self, name), "kl_override", None)
        if override == "paper":
            return algorithms.get(name).paper_kl
        return override or self.shared.kl

    def kl_departures(self) -> dict[str, str]:
        """The enabled online algorithms whose KL treatment is not shared.kl, each with how it differs: their
        comparison with the others is not matched."""
        shared = self.shared.kl
        return {name: f"{self.kl_treatment(name).describe()} (shared.kl: {shared.describe()})"
                for name in algorithms.online(self.enabled_algorithms()) if self.kl_treatment(name) != shared}

    def needs_reward_model_stage(self) -> bool:
        """Whether the plan trains the reward model: an enabled algorithm reads it, or the eval judge does."""
        reward_function = self.shared.reward_function
        return any(algorithms.needs_reward_model_stage(n, reward_function) for n in self.enabled_algorithms()) or (
            self.eval.enabled and self.eval.judge.type == "reward_model")

    @property
    def iterations(self) -> int:
        """Iterations of every matched algorithm (resolved from shared.token_budget when that is set)."""
        return self.shared.resolved_iterations()

    def enabled_algorithms(self) -> list[str]:
        return [name for name in algorithms.NAMES if getattr(self, name).enabled]

    def algorithm_config(self, name: str) -> dict:
        """The merged view one algorithm trains with: shared settings plus its own (the two never overlap)."""
        algorithms.get(name)  # a clear KeyError for a name that is not registered
        merged = {**self.shared.model_dump(mode="json"), **getattr(self, name).model_dump(mode="json")}
        merged["iterations"] = self.iterations
        return merged

    def resolved(self) -> dict:
        """Plain JSON-able dict; ``Suite.model_validate(suite.resolved())`` gives the same suite back. A suite that
        sweeps nothing has no ``sweep`` key, so its configs and hashes are those of suites written before sweeps."""
        return self.model_dump(mode="json", exclude={"sweep"} if not self.sweep else None)

    def config_hash(self) -> str:
        """What the suite computes, as 12 hex digits (its trackers left out: they only watch)."""
        from remax_bench.core.results import json_digest

        return json_digest(without_watch_fields(self.resolved()))


# Fields that say how a run is watched, costed or placed, not what it computes: a stage's identity (the config hash
# that resume compares) and the report's "what differed" leave them out, so adding a tracker, a stated throughput
# or moving the run onto Slurm never retrains a stage.
WATCH_FIELDS = (("runtime", "trackers"), ("runtime", "throughput"), ("runtime", "executor"), ("runtime", "slurm"))


def without_watch_fields(suite: dict) -> dict:
    """A resolved suite (as a dict) without its WATCH_FIELDS."""
    out = dict(suite)
    for block, name in WATCH_FIELDS:
        if isinstance(out.get(block), dict):
            out[block] = {k: v for k, v in out[block].items() if k != name}
    return out


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
