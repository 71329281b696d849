"""`make gpu-check` on this CPU: the dry mode runs the GPU check's own path (suite, stages, table) at a tiny shape, in
processes that cannot import the libraries the GPU machine's image lacks, so the check cannot rot between GPU runs."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from remax_bench import gpu_check
from remax_bench.core import algorithms

REPO = Path(__file__).resolve().parent.parent
# Not in the GPU machine's image (torch, transformers, accelerate, peft, pandas, matplotlib, pyyaml, click, rich, tqdm);
# pydantic is carried there as a wheel (make gpu-wheels).
ABSENT = ("vllm", "deepspeed", "alpaca_eval", "fastchat", "trl", "datasets", "openai", "anthropic", "tensorboard",
          "wandb", "mlflow", "scipy", "sklearn", "rliable")


def _without_optional_libraries(tmp_path) -> dict:
    """An environment whose Python processes (and their children) see the ABSENT modules as not installed:
    ``sys.modules[name] = None`` is how an absent module looks to ``import`` and to ``importlib.util.find_spec``."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nfor name in {ABSENT!r}:\n    sys.modules[name] = None\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}


def test_the_package_imports_without_the_optional_libraries(tmp_path):
    env = _without_optional_libraries(tmp_path)
    blocked = subprocess.run([sys.executable, "-c", "import vllm"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "ModuleNotFoundError" in blocked.stderr
    modules = ["remax_bench.cli", "remax_bench.bench", "remax_bench.gpu_check", "remax_bench.runner",
               "remax_bench.peers.against", "trainers.online", "trainers.dpo", "trainers.rollout"]
    imported = subprocess.run([sys.executable, "-c", "import importlib\n" + "".join(
        f"importlib.import_module({m!r})\n" for m in modules)], env=env, capture_output=True, text=True, cwd=REPO)
    assert imported.returncode == 0, imported.stderr[-3000:]


def test_dry_gpu_check_benches_every_algorithm_of_the_check_without_them(tmp_path):
    env = _without_optional_libraries(tmp_path)
    out = tmp_path / "gpu_check.md"
    run = subprocess.run([sys.executable, "-m", "remax_bench.gpu_check", "--dry", "--out", str(out), "--results-dir",
                          str(tmp_path / "results")], env=env, capture_output=True, text=True, cwd=REPO, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    text = out.read_text()
    suite, _, _ = gpu_check.check_suite(dry=True)
    for name in suite.enabled_algorithms():
        assert f"| {name} |" in text
    assert "ReMax vs PPO: peak memory" in text and "FAILED" not in text
    assert "tiny:nano" in text and "rss above baseline" in text  # the CPU's memory measure, named
    # prompts reach the check's length through the system preamble of the saved chat template
    from remax_bench.core.models import format_prompt, load_tokenizer

    tokenizer = load_tokenizer(str(tmp_path / "results" / "bench-tiny_nano" / "initial" / "policy"))
    prompt = format_prompt(tokenizer, "Reverse: abcdef")
    assert suite.shared.max_prompt_length - 48 <= len(tokenizer(prompt)["input_ids"]) <= suite.shared.max_prompt_length


def test_a_stage_that_did_not_finish_fails_the_check_loudly():
    suite, model, device = gpu_check.check_suite(dry=True)
    expected = suite.enabled_algorithms()
    row = {"algorithm": algorithms.BASELINE, "peak_memory_mib": 10.0, "model_states_mib": 1.0,
           "time_per_iteration_s": 1.0, "generate_s": 0.5, "score_s": 0.2, "train_s": 0.3, "tokens_per_second": 9.0,
           "memory_kind": "cuda_max_allocated"}
    text = gpu_check.report(pd.DataFrame([row]), suite, model, device, expected, 60.0)
    assert "FAILED:" in text and algorithms.FOCUS in text.split("FAILED:")[1]
    assert "peak memory: cuda max allocated" in text
