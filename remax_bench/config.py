"""Suite configs: one YAML names the models, the data, the settings every algorithm shares, and what is
specific to each algorithm. Validated with pydantic; every problem becomes one clear ``SuiteError``.

"Matched" means PPO, DPO and ReMax read the same ``shared:`` block unchanged. An algorithm block may only
add what is specific to that algorithm; one that sets a key of ``shared:`` is rejected.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
SUITES_DIR = REPO_ROOT / "suites"
MATCHED_ALGORITHMS = ("ppo", "dpo", "remax")


class SuiteError(ValueError):
    """A suite that cannot be used; the message names the field, what was expected and what was given."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


PositiveInt = Field(gt=0)


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
            raise ValueError("a model is required (a tiny: spec, a Hugging Face id or a local path)")
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
        return {"source": value} if isinstance(value, str) else value


class SyntheticData(Strict):
    seed: int = 1234
    tasks: Optional[list[str]] = None
    n_sft: int = Field(default=4000, gt=0)
    n_pairs: int = Field(default=3000, gt=0)
    n_prompts: int = Field(default=2000, gt=0)
    n_eval: int = Field(default=128, gt=0)
    demo_noise: float = Field(default=0.3, ge=0, le=1)


class Data(Strict):
    synthetic: SyntheticData = SyntheticData()
    sft: DataSource = DataSource(source="synthetic")
    preferences: DataSource = DataSource(source="synthetic")
    prompts: DataSource = DataSource(source="synthetic")
    eval_prompts: DataSource = DataSource(source="synthetic")


# -- the matched block -----------------------------------------------------------------------------
class Generation(Strict):
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)


class Shared(Strict):
    max_prompt_length: int = PositiveInt
    max_response_length: int = PositiveInt
    rollout_batch_size: int = PositiveInt
    train_batch_size: int = PositiveInt
    learning_rate: float = Field(gt=0)
    iterations: Optional[int] = Field(default=None, gt=0)
    token_budget: Optional[int] = Field(default=None, gt=0)
    kl_coef: float = Field(default=0.05, ge=0)
    generation: Generation = Generation()
    precision: Literal["fp32", "bf16"] = "fp32"
    gradient_checkpointing: bool = False
    reward_clip: Optional[float] = Field(default=5.0, gt=0)
    reward_normalize: bool = False
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: Optional[float] = Field(default=1.0, gt=0)
    heldout_eval_every: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _one_budget(self) -> "Shared":
        if (self.iterations is None) == (self.token_budget is None):
            raise ValueError("set exactly one of shared.iterations and shared.token_budget")
        return self

    def resolved_iterations(self) -> int:
        """Iterations every algorithm runs; a token budget counts generated tokens at the length limit."""
        if self.iterations is not None:
            return self.iterations
        return math.ceil(self.token_budget / (self.rollout_batch_size * self.max_response_length))


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


class PPO(Strict):
    enabled: bool = True
    clip_range: float = Field(default=0.2, gt=0)
    value_clip_range: float = Field(default=0.2, gt=0)
    gae_lambda: float = Field(default=0.95, ge=0, le=1)
    gamma: float = Field(default=1.0, gt=0, le=1)
    critic_learning_rate: float = Field(default=5e-4, gt=0)
    ppo_epochs: int = Field(default=1, gt=0)


class DPO(Strict):
    enabled: bool = True
    beta: float = Field(default=0.1, gt=0)


class ReMax(Strict):
    enabled: bool = True
    gamma: float = Field(default=1.0, gt=0, le=1)
    kl_mode: Literal["per_token", "return_to_go"] = "per_token"


# -- evaluation ------------------------------------------------------------------------------------
class EvalGeneration(Strict):
    max_new_tokens: int = Field(default=64, gt=0)
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    batch_size: int = Field(default=16, gt=0)


class AlpacaEvalConfig(Strict):
    enabled: bool = True
    prompts: str = "synthetic"  # "synthetic" | "default" (the public 805 instructions) | a local path
    max_instances: Optional[int] = Field(default=None, gt=0)


class MTBenchConfig(Strict):
    enabled: bool = True
    questions: str = "synthetic"  # "synthetic" | "default" (the public 80 questions) | a local path
    judge_prompts: str = "default"
    max_questions: Optional[int] = Field(default=None, gt=0)


class Judge(Strict):
    type: Literal["gold", "openai", "vllm_local", "reward_model"] = "gold"
    model: Optional[str] = None
    base_url: Optional[str] = None
    api_key_env: str = "OPENAI_API_KEY"  # the key itself is never part of a config
    max_retries: int = Field(default=3, ge=0)
    timeout_s: float = Field(default=60.0, gt=0)
    port: int = Field(default=8011, gt=0, lt=65536)
    serve_args: list[str] = []

    @model_validator(mode="after")
    def _needs_model(self) -> "Judge":
        if self.type in ("openai", "vllm_local") and not self.model:
            raise ValueError(f"a judge of type {self.type!r} needs eval.judge.model")
        return self


class Eval(Strict):
    enabled: bool = True
    backend: Literal["auto", "vllm", "hf"] = "auto"
    reference: str = "sft"
    generation: EvalGeneration = EvalGeneration()
    alpaca_eval: AlpacaEvalConfig = AlpacaEvalConfig()
    mt_bench: MTBenchConfig = MTBenchConfig()
    judge: Judge = Judge()
    conversation_template: Optional[str] = None
    bootstrap_samples: int = Field(default=1000, gt=0)


# -- runtime ---------------------------------------------------------------------------------------
class DeepSpeed(Strict):
    enabled: bool = False
    zero_stage: int = Field(default=0, ge=0, le=3)
    offload_optimizer: bool = False
    offload_params: bool = False
    gradient_accumulation_steps: int = Field(default=1, gt=0)

    @model_validator(mode="after")
    def _offload(self) -> "DeepSpeed":
        if self.offload_optimizer and (not self.enabled or self.zero_stage < 1):
            raise ValueError("offload_optimizer needs deepspeed.enabled and zero_stage >= 1")
        if self.offload_params and (not self.enabled or self.zero_stage != 3):
            raise ValueError("offload_params needs deepspeed.enabled and zero_stage 3")
        return self


class Runtime(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_gpus: int = Field(default=1, ge=0)
    num_nodes: int = Field(default=1, gt=0)
    hostfile: Optional[str] = None
    master_port: int = Field(default=29500, gt=0, lt=65536)
    deepspeed: DeepSpeed = DeepSpeed()

    @model_validator(mode="after")
    def _multi_node(self) -> "Runtime":
        if self.num_nodes > 1 and not self.hostfile:
            raise ValueError("runtime.num_nodes > 1 needs runtime.hostfile")
        if (self.num_nodes > 1 or self.num_gpus > 1) and not self.deepspeed.enabled:
            raise ValueError("several GPUs or nodes run through DeepSpeed: set runtime.deepspeed.enabled")
        return self


# -- the suite -------------------------------------------------------------------------------------
class Suite(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    models: Models
    data: Data = Data()
    shared: Shared
    sft: SFTStage = SFTStage()
    reward_model: RewardModelStage = RewardModelStage()
    ppo: PPO = PPO()
    dpo: DPO = DPO()
    remax: ReMax = ReMax()
    eval: Eval = Eval()
    runtime: Runtime = Runtime()
    seeds: list[int] = [0]

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("give at least one seed")
        if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct non-negative integers, got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _cross_checks(self) -> "Suite":
        if self.eval.enabled and self.eval.judge.type == "gold" and self.data.eval_prompts.source != "synthetic":
            raise ValueError("eval.judge.type 'gold' scores the synthetic task only: set data.eval_prompts to synthetic")
        if not self.enabled_algorithms():
            raise ValueError("enable at least one of ppo, dpo, remax")
        return self

    @property
    def iterations(self) -> int:
        return self.shared.resolved_iterations()

    def enabled_algorithms(self) -> list[str]:
        return [name for name in MATCHED_ALGORITHMS if getattr(self, name).enabled]

    def algorithm_config(self, name: str) -> dict:
        """The merged view one algorithm trains with: shared settings plus its own."""
        if name not in MATCHED_ALGORITHMS:
            raise KeyError(f"{name!r} is not one of {MATCHED_ALGORITHMS}")
        return {**self.shared.model_dump(mode="json"), **getattr(self, name).model_dump(mode="json")}

    def resolved(self) -> dict:
        return self.model_dump(mode="json")

    def config_hash(self) -> str:
        canonical = json.dumps(self.resolved(), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


# -- loading and errors ----------------------------------------------------------------------------
def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _submodel(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    field = model.model_fields.get(key)
    if field is None:
        return None
    annotation = field.annotation
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _check_matched(raw: dict) -> list[str]:
    """An algorithm block that sets a shared key would break the matched comparison."""
    errors = []
    shared_keys = set(Shared.model_fields)
    for algo in MATCHED_ALGORITHMS:
        block = raw.get(algo)
        if isinstance(block, dict):
            for key in block:
                if key in shared_keys:
                    errors.append(
                        f"{algo}.{key}: cannot override shared.{key} in an algorithm block; that would break the "
                        f"matched comparison (set it in shared: for all algorithms)"
                    )
    return errors


def _unknown_keys(raw: Any, model: type[BaseModel], path: str) -> list[str]:
    """Unknown keys at every level, each with a did-you-mean."""
    if not isinstance(raw, dict):
        return []
    errors = []
    allowed = _allowed_keys(model)
    for key, value in raw.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in allowed:
            if path in MATCHED_ALGORITHMS and key in Shared.model_fields:
                continue  # reported by _check_matched with the clearer message
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f"; allowed here: {', '.join(allowed)}"
            errors.append(f"{where}: unknown key{hint}")
            continue
        sub = _submodel(model, key)
        if sub is not None and sub is not DataSource:
            errors.extend(_unknown_keys(value, sub, where))
        elif sub is DataSource and isinstance(value, dict):
            errors.extend(_unknown_keys(value, DataSource, where))
    return errors


def _describe(err: dict) -> str:
    where = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    kind, message = err["type"], err["msg"]
    given = err.get("input")
    if kind == "missing":
        if where == "models.policy" or where == "models":
            return f"{where}: a model is required (a tiny: spec, a Hugging Face id or a local path)"
        return f"{where}: required field is missing"
    message = message.removeprefix("Value error, ")
    shown = repr(given) if not isinstance(given, (dict, list)) else type(given).__name__
    if where:
        return f"{where}: {message} (got {shown})"
    return message


def validate_suite(raw: Any, source: str = "<suite>") -> Suite:
    if not isinstance(raw, dict):
        raise SuiteError(f"{source}: the top level must be a mapping of keys (name, models, shared, ...), "
                         f"got {type(raw).__name__}")
    errors = _check_matched(raw) + _unknown_keys(raw, Suite, "")
    if errors:
        raise SuiteError("\n".join(errors))
    try:
        return Suite.model_validate(raw)
    except ValidationError as err:
        raise SuiteError("\n".join(dict.fromkeys(_describe(e) for e in err.errors()))) from None


def load_suite_text(text: str, source: str = "<suite>") -> Suite:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SuiteError(f"{source}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    return validate_suite(raw, source)


def resolve_suite_path(path_or_name: str | Path) -> Path:
    path = Path(path_or_name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return SUITES_DIR / f"{path_or_name}.yaml"


def load_suite(path_or_name: str | Path) -> Suite:
    """A suite from a YAML path, or a bare name (``tiny``) in the suites/ folder."""
    path = resolve_suite_path(path_or_name)
    if not path.is_file():
        known = sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))
        raise SuiteError(f"suite file {path} not found; give a YAML path or one of {known}")
    return load_suite_text(path.read_text(), str(path))


def to_yaml(suite: Suite) -> str:
    return yaml.safe_dump(suite.resolved(), sort_keys=False, default_flow_style=False)
