"""One module per training stage: sft, reward_model, ppo, remax, dpo (and their shared rollout engine).

Each stage runs on its own as ``python -m trainers.<stage> --config STAGE.json --out DIR``.
"""
