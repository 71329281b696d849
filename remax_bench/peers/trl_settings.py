"""What "the same work" means for TRL's trainers: a suite's settings as TRL's own config fields.

TRL (huggingface/trl, read at 1.16) counts its batches in completions, not prompts:

    GRPOTrainer / RLOOTrainer   generation_batch_size  = completions generated per iteration (prompts x k)
                                per_device_train_batch_size = completions per optimizer step
                                steps_per_generation   = optimizer steps per iteration (their quotient)
                                num_generations        = k;  num_iterations = passes over each batch (mu)
    DPOTrainer                  per_device_train_batch_size = pairs per optimizer step

so one of our iterations (one rollout batch and every update made from it) is ``steps_per_generation x
num_iterations`` of TRL's optimizer steps. Every other field below is set to what our run uses, and each
algorithm's notes say what stays different because TRL has no switch for it (its math, never its amount of work).
Nothing here imports TRL: the settings are plain dicts, checked in the fast tests; trl_stage.py builds TRL's
configs from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from remax_bench.core import algorithms
from remax_bench.core.algorithms import KL
from remax_bench.core.config import Suite


class NotMatchable(ValueError):
    """The suite asks for work TRL's trainer cannot do in the same amounts."""


@dataclass
class TRLPlan:
    algorithm: str
    trainer: str  # GRPOTrainer | RLOOTrainer | DPOTrainer
    config: dict  # keyword arguments of its config class (GRPOConfig, ...)
    steps_per_iteration: int  # TRL optimizer steps per iteration of ours
    rows_per_iteration: int  # completions generated (online) or pairs trained on (DPO) per iteration
    matched: list[str] = field(default_factory=list)
    differs: list[str] = field(default_factory=list)


def training_arguments(suite: Suite, seed: int, device: str) -> dict:
    """The transformers.TrainingArguments fields every TRL trainer shares, as our engines train."""
    shared = suite.shared
    return {
        "learning_rate": shared.learning_rate, "lr_scheduler_type": "constant", "warmup_steps": 0,
        "weight_decay": shared.weight_decay, "max_grad_norm": shared.max_grad_norm or 0.0,
        # trainers/optimizer.py: torch's fused AdamW, default betas and eps
        "optim": "adamw_torch_fused", "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8,
        "gradient_accumulation_steps": 1, "gradient_checkpointing": shared.gradient_checkpointing,
        # fp32 master weights with bf16 autocast, as StageRun.autocast (TRL defaults to bf16 and checkpointing on)
        "bf16": shared.precision == "bf16", "fp16": False, "model_init_kwargs": {"dtype": "float32"},
        "use_cpu": device == "cpu", "seed": seed, "data_seed": seed, "disable_dropout": True,
        "logging_steps": 1, "report_to": "none", "save_strategy": "no", "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def _generation(suite: Suite) -> dict:
    gen = suite.shared.generation
    return {"max_completion_length": suite.shared.max_response_length, "temperature": gen.temperature,
            "top_p": gen.top_p, "top_k": gen.top_k}


def _completion_batches(suite: Suite, name: str) -> tuple[int, int, int]:
    """(completions per iteration, completions per optimizer step, optimizer steps per pass), as ours splits them:
    mini-batches of shared.train_batch_size answers for an algorithm with epochs, the whole batch otherwise."""
    budget = suite.matched_budget(name)
    rows = budget["samples_per_iteration"]
    spec = algorithms.get(name)
    per_step = min(suite.shared.train_batch_size, rows) if spec.epochs_field else rows
    if rows % per_step:
        raise NotMatchable(f"{name}: {rows} answers per iteration do not split into mini-batches of "
                           f"shared.train_batch_size={per_step}; TRL's trainers take equal mini-batches only")
    return rows, per_step, rows // per_step


COMMON_MATCHED = ["model and tokenizer (the same checkpoint)", "learning rate, constant schedule, fused AdamW, "
                  "gradient clipping", "precision and gradient checkpointing", "dropout off"]


def grpo_plan(suite: Suite, seed: int, device: str) -> TRLPlan:
    """GRPOTrainer: group-normalised advantages, clipped ratio, k3 KL in the loss, token mean over the batch."""
    name, cfg = "grpo", suite.grpo
    rows, per_step, steps = _completion_batches(suite, name)
    k = suite.samples_per_prompt(name)
    config = {**training_arguments(suite, seed, device), **_generation(suite), "num_generations": k,
              "per_device_train_batch_size": per_step, "generation_batch_size": rows, "num_iterations": cfg.epochs,
              "beta": suite.shared.kl_coef, "epsilon": cfg.clip_range,
              # "dapo": token losses summed over the global batch, divided by its token count: ours (verl's token-mean)
              "loss_type": "dapo", "scale_rewards": "group" if cfg.std_normalize else "none",
              "mask_truncated_completions": False}
    plan = TRLPlan(name, "GRPOTrainer", config, steps * cfg.epochs, rows, list(COMMON_MATCHED))
    plan.matched += [f"{suite.prompts_per_iteration(name)} prompts x k={k} answers of up to "
                     f"{suite.shared.max_response_length} tokens, sampling settings",
                     f"{steps * cfg.epochs} optimizer step(s) of {per_step} answers per iteration (mu={cfg.epochs})",
                     f"beta={suite.shared.kl_coef}, clip range {cfg.clip_range}, token-mean loss",
                     "reward model (the same checkpoint)"]
    if suite.kl_treatment(name) != KL(estimator="k3", placement="loss"):
        plan.differs.append(f"KL: TRL puts beta * k3 in the loss; this suite's grpo uses "
                            f"{suite.kl_treatment(name).describe()} (set grpo.kl_override: paper to match)")
    plan.differs += ["TRL re-tokenises the decoded answers for the reward model and does not clip scores",
                     "std + 1e-4 in TRL's advantage denominator, std + 1e-6 in ours"]
    return plan


def rloo_plan(suite: Suite, seed: int, device: str) -> TRLPlan:
    """RLOOTrainer: leave-one-out baseline, k1 KL summed into the reward, one update per batch here."""
    name = "rloo"
    rows, per_step, steps = _completion_batches(suite, name)
    k = suite.samples_per_prompt(name)
    clip = suite.shared.reward_clip
    config = {**training_arguments(suite, seed, device), **_generation(suite), "num_generations": k,
              "per_device_train_batch_size": per_step, "generation_batch_size": rows, "num_iterations": 1,
              "beta": suite.shared.kl_coef, "normalize_advantages": False,
              "reward_clip_range": (-clip, clip) if clip is not None else None, "mask_truncated_completions": False}
    plan = TRLPlan(name, "RLOOTrainer", config, steps, rows, list(COMMON_MATCHED))
    plan.matched += [f"{suite.prompts_per_iteration(name)} prompts x k={k} answers of up to "
                     f"{suite.shared.max_response_length} tokens, sampling settings",
                     f"one optimizer step of {per_step} answers per iteration", f"beta={suite.shared.kl_coef}",
                     "reward model (the same checkpoint)"]
    kl = suite.kl_treatment(name)
    if kl.placement != "reward" or kl.estimator != "k1":
        plan.differs.append(f"KL: TRL subtracts beta * (summed k1) from the score; this suite's rloo uses {kl.describe()}")
    plan.differs += ["TRL scores the policy once more before training for its ratio (ours takes pi_old from the "
                     "training forward itself when a batch gets one update)",
                     "TRL's loss is a sequence-level clipped ratio (its gradient at ratio 1 is REINFORCE's sum over "
                     "tokens; ours is the token mean)", "TRL re-tokenises the decoded answers for the reward model"]
    return plan


def dpo_plan(suite: Suite, seed: int, device: str) -> TRLPlan:
    """DPOTrainer: the sigmoid loss, reference log-probs computed once before training (as ours)."""
    shared = suite.shared
    config = {**training_arguments(suite, seed, device), "per_device_train_batch_size": shared.train_batch_size,
              "beta": suite.dpo.beta, "loss_type": ["sigmoid"], "precompute_ref_log_probs": True,
              "precompute_ref_batch_size": shared.train_batch_size,
              "max_length": shared.max_prompt_length + shared.max_response_length}
    plan = TRLPlan("dpo", "DPOTrainer", config, 1, shared.train_batch_size, list(COMMON_MATCHED))
    plan.matched += [f"{shared.train_batch_size} pairs per optimizer step, beta={suite.dpo.beta}, sigmoid loss",
                     "the same preference pairs", "reference log-probs computed once, before training"]
    plan.differs += [f"TRL truncates prompt + answer to {config['max_length']} tokens; ours truncates the answer to "
                     f"{shared.max_response_length}"]
    return plan


PLANS = {"GRPOTrainer": grpo_plan, "RLOOTrainer": rloo_plan, "DPOTrainer": dpo_plan}


def trl_plan(suite: Suite, name: str, seed: int, device: str) -> TRLPlan:
    trainer = algorithms.get(name).trl_trainer
    if trainer is None:
        raise NotMatchable(f"{name} has no TRL trainer; TRL has {', '.join(algorithms.with_trl_trainer())}")
    return PLANS[trainer](suite, seed, device)
