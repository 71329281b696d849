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
from typing import Literal, Optional, Union

from pydantic import Field

from remax_bench.core.schema import Strict


# -- the KL regularisation ------------------------------------------------------------------------------
class KL(Strict):
    """The KL regularisation against the frozen reference, one definition every online algorithm applies the same
    way (trainers/online.py: ``Experience``). With d_t = log pi(a_t) - log pi_ref(a_t), the per-token estimate is

        k1 = d,    k2 = d^2 / 2,    k3 = exp(-d) + d - 1            (Schulman's estimators of KL(pi || pi_ref))

    placement reward: the penalty -beta * k_t is a per-token reward; ``shape`` says how it reaches the advantage:
        return_to_go   A_t gets sum_{j >= t} gamma^(j - t) (-beta k_j)   (the KL is part of the return; GAE's for PPO)
        per_token      A_t gets -beta k_t only                           (the ReMax authors' code)
    placement loss: beta * (token mean of k_t) is added to the loss, with its gradient (GRPO's).
    """

    estimator: Literal["k1", "k2", "k3"] = "k1"
    placement: Literal["reward", "loss"] = "reward"
    shape: Literal["return_to_go", "per_token"] = Field(
        default="return_to_go", description="how a reward-placed penalty enters the advantage (ignored for loss)")

    def describe(self) -> str:
        if self.placement == "loss":
            return f"beta * {self.estimator} in the loss"
        return f"-beta * {self.estimator} per-token reward, {self.shape.replace('_', '-')}"


class OnlineBlock(Strict):
    """What every online algorithm's block may set besides its own settings."""

    kl_override: Optional[Union[Literal["paper"], KL]] = Field(
        default=None, description="this algorithm's own KL treatment instead of shared.kl ('paper': its paper's); "
        "the comparison is then flagged as not matched")


# -- the algorithm-specific suite blocks -------------------------------------------------------------
class PPOBlock(OnlineBlock):
    """PPO as InstructGPT / DeepSpeed-Chat run it: critic from the reward model, GAE, clipped ratio and value."""

    enabled: bool = True
    clip_range: float = Field(default=0.2, gt=0, description="epsilon: the policy ratio is clipped to 1 +- epsilon")
    value_clip_range: float = Field(default=0.2, gt=0, description="the critic's values move at most this far")
    gae_lambda: float = Field(default=0.95, ge=0, le=1, description="lambda of generalised advantage estimation")
    gamma: float = Field(default=1.0, gt=0, le=1, description="gamma: discount of the per-token rewards")
    critic_learning_rate: float = Field(default=5e-4, gt=0, description="the critic's AdamW learning rate")
    ppo_epochs: int = Field(default=1, gt=0, description="passes over each rollout batch (mini-batches of "
                            "shared.train_batch_size answers)")


class DPOBlock(Strict):
    """DPO: the sigmoid loss on preference pairs against the frozen SFT model."""

    enabled: bool = True
    beta: float = Field(default=0.1, gt=0, description="beta: scale of the implicit reward log pi/pi_ref")


class ReMaxBlock(OnlineBlock):
    """ReMax: REINFORCE with the greedy answer's reward as baseline; nothing is required beyond shared."""

    enabled: bool = True
    samples_per_prompt: int = Field(
        default=1, ge=1, description="k sampled answers per prompt, all centred by the prompt's one greedy answer "
        "(the paper: 1; verl runs k > 1)")
    gamma: float = Field(default=1.0, gt=0, le=1, description="gamma: discount of the centred score")


# The critic-free family beyond the paper. Off unless a suite enables them, so suites written before them
# (tiny.yaml and its committed baseline) run exactly the algorithms they always ran.
def _samples(default: int, least: int):
    return Field(default=default, ge=least, description=f"k sampled answers per prompt (at least {least})")


class ReinforceBlock(OnlineBlock):
    """REINFORCE without a baseline: the control of the variance comparison."""

    enabled: bool = False
    samples_per_prompt: int = _samples(1, 1)
    gamma: float = Field(default=1.0, gt=0, le=1, description="gamma: discount of the return-to-go")


class GRPOBlock(OnlineBlock):
    """GRPO (Shao et al. 2024): group-normalised outcome advantage, clipped ratio (its paper: k3 KL in the loss)."""

    enabled: bool = False
    samples_per_prompt: int = _samples(4, 2)
    clip_range: float = Field(default=0.2, gt=0, description="epsilon: the policy ratio is clipped to 1 +- epsilon")
    epochs: int = Field(default=1, gt=0, description="mu: passes over each rollout batch (mini-batches of "
                        "shared.train_batch_size answers)")
    std_normalize: bool = Field(default=True, description="divide by the group's std (false: Dr. GRPO's mean only)")


class RLOOBlock(OnlineBlock):
    """RLOO (Ahmadian et al. 2024): each sample's baseline is the mean score of the other k - 1."""

    enabled: bool = False
    samples_per_prompt: int = _samples(4, 2)
    gamma: float = Field(default=1.0, gt=0, le=1, description="gamma: discount of the return-to-go")


class ReinforcePPBlock(OnlineBlock):
    """REINFORCE++ with baseline (OpenRLHF's reinforce_baseline): group mean, then batch normalisation."""

    enabled: bool = False
    samples_per_prompt: int = _samples(4, 2)
    gamma: float = Field(default=1.0, gt=0, le=1, description="gamma: discount of the return-to-go")


# -- the registry -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Algorithm:
    """What an algorithm is to the rest of the code. An online algorithm's module ``trainers/<name>.py`` defines
    ``advantages(exp, cfg, stats)`` (and, where it differs from plain REINFORCE, ``policy_loss``); the one online
    loop (trainers/online.py) provides what the fields below ask for."""

    name: str  # suite block, stage name and trainer module (trainers/<name>.py)
    label: str  # as reports and tables name it
    block: type[Strict]  # its suite block
    update: str  # where its update rule lives, file:function
    online: bool  # generates answers to data.prompts every iteration (else: trains on preference pairs)
    reward_model: bool  # optimises a reward model's score
    critic: bool = False  # trains a value model (initialised from the reward model)
    greedy_baseline: bool = False  # decodes the greedy answer of every prompt as a baseline
    epochs_field: str | None = None  # block field of passes over each rollout batch (mini-batches); None: one update
    paper_kl: KL | None = None  # its paper's own KL treatment (``kl_override: paper``)
    preference_data: bool = False
    color: str = "#7f7f7f"

    @property
    def module(self) -> str:
        return f"trainers.{self.name}"

    def epochs(self, block) -> int:
        """Passes over each rollout batch (1 for an algorithm that takes one update per batch)."""
        return int(getattr(block, self.epochs_field)) if self.epochs_field else 1


REGISTRY: dict[str, Algorithm] = {
    algorithm.name: algorithm
    for algorithm in (
        Algorithm("ppo", "PPO", PPOBlock, "trainers/ppo.py:gae, advantages, policy_loss, value_loss", online=True,
                  reward_model=True, critic=True, epochs_field="ppo_epochs", paper_kl=KL(), color="#1f77b4"),
        Algorithm("remax", "ReMax", ReMaxBlock, "trainers/remax.py:advantages", online=True, reward_model=True,
                  greedy_baseline=True, paper_kl=KL(shape="per_token"), color="#d62728"),
        Algorithm("dpo", "DPO", DPOBlock, "trainers/dpo.py:dpo_loss", online=False, reward_model=False,
                  preference_data=True, color="#2ca02c"),
        Algorithm("reinforce", "REINFORCE", ReinforceBlock, "trainers/reinforce.py:advantages", online=True,
                  reward_model=True, paper_kl=KL(), color="#8c564b"),
        Algorithm("grpo", "GRPO", GRPOBlock, "trainers/grpo.py:advantages, policy_loss", online=True,
                  reward_model=True, epochs_field="epochs", paper_kl=KL(estimator="k3", placement="loss"),
                  color="#ff7f0e"),
        Algorithm("rloo", "RLOO", RLOOBlock, "trainers/rloo.py:advantages", online=True, reward_model=True,
                  paper_kl=KL(), color="#9467bd"),
        Algorithm("reinforce_pp", "REINFORCE++", ReinforcePPBlock, "trainers/reinforce_pp.py:advantages", online=True,
                  reward_model=True, paper_kl=KL(), color="#17becf"),
    )
}
NAMES: tuple[str, ...] = tuple(REGISTRY)  # the order of stages, tables and plots
BASELINE = "ppo"  # ratios (memory, time) are taken against this algorithm, as the paper does
FOCUS = "remax"  # the algorithm whose claims the paper makes (ReMax vs PPO), compared with every other
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
    for field, values in suite.sweep.items():  # a sweep: every value is a run of every algorithm
        shared[field.removeprefix("shared.")] = f"sweep {values}"
    for key, value in shared.items():
        rows.append({"setting": f"shared.{key}", "symbol": SYMBOLS.get(key.split(".")[-1], ""),
                     "shared": str(value), **{REGISTRY[a].label: "" for a in enabled}})
    # The KL treatment each online algorithm resolves to: shared.kl, or its own where its block overrides it (then
    # its comparison with the others is not matched, and the row says so).
    departures = suite.kl_departures()
    kl_row = {"setting": "KL treatment", "symbol": "", "shared": suite.shared.kl.describe()}
    for a in enabled:
        if not REGISTRY[a].online:
            kl_row[REGISTRY[a].label] = "–"
        elif a in departures:
            kl_row[REGISTRY[a].label] = f"NOT MATCHED: {suite.kl_treatment(a).describe()}"
        else:
            kl_row[REGISTRY[a].label] = "shared"
    rows.append(kl_row)
    own = {a: flat(getattr(suite, a).model_dump(mode="json", exclude={"enabled", "kl_override"})) for a in enabled}
    for name in enabled:
        for key, value in own[name].items():
            row = {"setting": f"{name}.{key}", "symbol": SYMBOLS.get(key, ""), "shared": "",
                   **{REGISTRY[a].label: "–" for a in enabled}}
            row[REGISTRY[name].label] = str(value)
            rows.append(row)
    return rows
