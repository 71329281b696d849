"""remax-bench: matched PPO, DPO and ReMax trainings, measured side by side."""

__version__ = "0.1.0"
