"""The algorithms remax-bench compares, in one registry that every other part reads.

Each entry says what an algorithm needs (a reward model to optimise? a critic? a greedy baseline? preference
data?), where its update rule lives (``trainers/<name>.py``, one short function next to its formula) and its
suite block: the pydantic schema of the settings that are specific to it. What every algorithm shares lives in
``shared:`` (remax_bench.core.config.Shared) and an algorithm block may not repeat it.

The stage graph (runner.plan), the suite schema (config.Suite), report, check, bench and estimate iterate over
``REGISTRY``. Adding an algorithm is its trainer module, one entry here, its tests and a block in the suites.

Symbols follow the papers: beta is the KL coefficient (``shared.kl_coef``), gamma the discount, lambda GAE's
trace parameter, epsilon PPO's clip range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from remax_bench.core.schema import Strict


# -- the algorithm-specific suite blocks -------------------------------------------------------------
class PPOBlock(Strict):
    """PPO as InstructGPT / DeepSpeed-Chat run it: critic from the reward model, GAE, clipped ratio and value."""

    enabled: bool = True
    clip_range: float = Field(default=0.2, gt=0, description="epsilon: the policy ratio is clipped to 1 +- epsilon")
    value_clip_range: float = Field(default=0.2, gt=0, description="the critic's values move at most this far")
    gae_lambda: float = Field(default=0.95, ge=0, le=1, description="lambda of generalised advantage estimation")
    gamma: float = Field(default=1.0, gt=0, le=1, description="gamma: discount of the per-token rewards")
    critic_learning_rate: float = Field(default=5e-4, gt=0, description="the critic's AdamW learning rate")
    ppo_epochs: int = Field(default=1, gt=0, description="passes over each rollout batch")


class DPOBlock(Strict):
    """DPO: the sigmoid loss on preference pairs against the frozen SFT model."""

    enabled: bool = True
    beta: float = Field(default=0.1, gt=0, description="beta: scale of the implicit reward log pi/pi_ref")


class ReMaxBlock(Strict):
    """ReMax: REINFORCE with the greedy answer's reward as baseline; nothing is required beyond shared."""

    enabled: bool = True
    samples_per_prompt: int = Field(
        default=1, ge=1, description="k sampled answers per prompt, all centred by the prompt's one greedy answer "
        "(the paper: 1; verl runs k > 1)")
    gamma: float = Field(default=1.0, gt=0, le=1, description="gamma: discount of the centred score")
    kl_mode: Literal["per_token", "return_to_go"] = Field(
        default="per_token",
        description="per_token: the authors' returns, each token's own KL penalty plus gamma^(T-t+1) times the "
        "clipped centred score; return_to_go: verl's estimator, the reverse cumulative sum of the token-level "
        "rewards minus the greedy baseline",
    )


# The critic-free family beyond the paper. Off unless a suite enables them, so suites written before them
# (tiny.yaml and its committed baseline) run exactly the algorithms they always ran.
def _samples(default: int, least: int):
    return Field(default=default, ge=least, description=f"k sampled answers per prompt (at least {least})")


class ReinforceBlock(Strict):
    """REINFORCE without a baseline: the control of the variance comparison."""

    enabled: bool = False
    samples_per_prompt: int = _samples(1, 1)
    gamma: float = Field(default=1.0, gt=0, le=1, description="gamma: discount of the return-to-go")


class GRPOBlock(Strict):
    """GRPO (Shao et al. 2024): group-normalised outcome advantage, clipped ratio, k3 KL in the loss."""

    enabled: bool = False
    samples_per_prompt: int = _samples(4, 2)
    clip_range: float = Field(default=0.2, gt=0, description="epsilon: the policy ratio is clipped to 1 +- epsilon")
    kl_mode: Literal["loss", "reward"] = Field(
        default="loss", description="loss: beta * k3 KL estimate added to the loss (GRPO); reward: -beta * sum of "
        "log-ratios subtracted from each score before the group normalisation")
    epochs: int = Field(default=1, gt=0, description="mu: passes over each rollout batch (mini-batches of "
                        "shared.train_batch_size answers)")
    std_normalize: bool = Field(default=True, description="divide by the group's std (false: Dr. GRPO's mean only)")


class RLOOBlock(Strict):
    """RLOO (Ahmadian et al. 2024): each sample's baseline is the mean score of the other k - 1."""

    enabled: bool = False
    samples_per_prompt: int = _samples(4, 2)
    gamma: float = Field(default=1.0, gt=0, le=1, description="gamma: discount of the return-to-go")


class ReinforcePPBlock(Strict):
    """REINFORCE++ with baseline (OpenRLHF's reinforce_baseline): group mean, then batch normalisation."""

    enabled: bool = False
    samples_per_prompt: int = _samples(4, 2)
    gamma: float = Field(default=1.0, gt=0, le=1, description="gamma: discount of the return-to-go")


# -- the registry -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Algorithm:
    name: str  # suite block, stage name and trainer module (trainers/<name>.py)
    label: str  # as reports and tables name it
    block: type[Strict]  # its suite block
    update: str  # where its update rule lives, file:function
    online: bool  # generates answers to data.prompts every iteration (else: trains on preference pairs)
    reward_model: bool  # optimises a reward model's score
    critic: bool = False  # trains a value model
    greedy_baseline: bool = False  # decodes the greedy answer of every prompt as a baseline
    preference_data: bool = False
    color: str = "#7f7f7f"

    @property
    def module(self) -> str:
        return f"trainers.{self.name}"


REGISTRY: dict[str, Algorithm] = {
    algorithm.name: algorithm
    for algorithm in (
        Algorithm("ppo", "PPO", PPOBlock, "trainers/ppo.py:gae, ppo_policy_loss, ppo_value_loss", online=True, reward_model=True,
                  critic=True, color="#1f77b4"),
        Algorithm("remax", "ReMax", ReMaxBlock, "trainers/remax.py:remax_returns, remax_loss", online=True,
                  reward_model=True, greedy_baseline=True, color="#d62728"),
        Algorithm("dpo", "DPO", DPOBlock, "trainers/dpo.py:dpo_loss", online=False, reward_model=False,
                  preference_data=True, color="#2ca02c"),
        Algorithm("reinforce", "REINFORCE", ReinforceBlock, "trainers/reinforce.py:reinforce_returns",
                  online=True, reward_model=True, color="#8c564b"),
        Algorithm("grpo", "GRPO", GRPOBlock, "trainers/grpo.py:grpo_advantages, grpo_loss", online=True,
                  reward_model=True, color="#ff7f0e"),
        Algorithm("rloo", "RLOO", RLOOBlock, "trainers/rloo.py:rloo_baselines", online=True, reward_model=True,
                  color="#9467bd"),
        Algorithm("reinforce_pp", "REINFORCE++", ReinforcePPBlock,
                  "trainers/reinforce_pp.py:reinforce_pp_advantages", online=True, reward_model=True,
                  color="#17becf"),
    )
}
NAMES: tuple[str, ...] = tuple(REGISTRY)  # the order of stages, tables and plots
BASELINE = "ppo"  # ratios (memory, time) are taken against this algorithm, as the paper does
PREPARATION_STAGES = {"sft": "SFT", "reward_model": "reward model"}  # trained once, before the algorithms


def get(name: str) -> Algorithm:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"{name!r} is not an algorithm; expected one of {', '.join(NAMES)}") from None


def label(stage: str) -> str:
    """The display name of an algorithm or a preparation stage."""
    if stage in REGISTRY:
        return REGISTRY[stage].label
    return PREPARATION_STAGES.get(stage, stage)


def online(names=NAMES) -> list[str]:
    return [n for n in names if REGISTRY[n].online]


def needing_reward_model(names=NAMES) -> list[str]:
    return [n for n in names if REGISTRY[n].reward_model]


def needs_reward_model_stage(name: str, reward_function: str | None = None) -> bool:
    """Whether an algorithm's stage reads the trained reward model: to optimise its score (unless the suite
    names a reward function instead, shared.reward_function) or to initialise a critic from it."""
    spec = get(name)
    return spec.critic or (spec.reward_model and reward_function is None)


def samples_per_prompt(block) -> int:
    """k of an algorithm's suite block; 1 for an algorithm that samples one answer per prompt."""
    return getattr(block, "samples_per_prompt", 1)


def needing_preferences(names=NAMES) -> list[str]:
    return [n for n in names if REGISTRY[n].preference_data]


# The papers' symbols for the settings that have one (shown by `remax-bench validate --table`).
SYMBOLS = {"kl_coef": "beta", "gamma": "gamma", "gae_lambda": "lambda", "clip_range": "epsilon",
           "value_clip_range": "epsilon_v", "beta": "beta_DPO", "reward_clip": "c", "learning_rate": "eta",
           "samples_per_prompt": "k", "epochs": "mu"}


def hyperparameter_table(suite) -> list[dict[str, str]]:
    """The resolved settings of each enabled algorithm, as a paper's appendix lists them: one row per setting,
    the shared value once (every algorithm uses it unchanged), each algorithm's own in its column."""
    enabled = suite.enabled_algorithms()
    rows = []

    def flat(data: dict, prefix: str = "") -> dict[str, object]:
        out = {}
        for key, value in data.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    shared = flat(suite.shared.model_dump(mode="json"))
    shared["iterations"] = suite.iterations  # resolved from the token budget when that is set
    for key, value in shared.items():
        rows.append({"setting": f"shared.{key}", "symbol": SYMBOLS.get(key.split(".")[-1], ""),
                     "shared": str(value), **{REGISTRY[a].label: "" for a in enabled}})
    own = {a: flat(getattr(suite, a).model_dump(mode="json", exclude={"enabled"})) for a in enabled}
    for name in enabled:
        for key, value in own[name].items():
            row = {"setting": f"{name}.{key}", "symbol": SYMBOLS.get(key, ""), "shared": "",
                   **{REGISTRY[a].label: "–" for a in enabled}}
            row[REGISTRY[name].label] = str(value)
            rows.append(row)
    return rows
