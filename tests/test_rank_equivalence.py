"""Every online algorithm of the registry trains the same on two ranks as on one, by construction: the same
seeded global rollout batch, on one process and split over two real processes (gloo), gives the same logged
losses and the same averaged gradients, step after step (tests/fixtures/rank_equivalence.py). A statistic that
crossed rows on a rank's own share (a whitening, a token mean, a mini-batch size) would break it; a new algorithm
is in it without being named.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from remax_bench.core import algorithms
from remax_bench.core.deepspeed_config import free_port

WORKER = Path(__file__).parent / "fixtures" / "rank_equivalence.py"
REPO = Path(__file__).resolve().parent.parent


def _launch(world_size: int, out: Path) -> dict:
    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": str(world_size)}
    processes = [subprocess.Popen([sys.executable, str(WORKER), "--out", str(out)], env={**env, "RANK": str(rank)},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for rank in range(world_size)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for p, text in zip(processes, outputs):
        assert p.returncode == 0, text[-3000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranks")
    return _launch(1, tmp / "one.pt"), _launch(2, tmp / "two.pt")


@pytest.mark.parametrize("name", algorithms.online())
def test_two_ranks_train_as_one_process(runs, name):
    one, two = runs[0][name], runs[1][name]
    assert len(one["policy_grads"]) == len(two["policy_grads"]) >= 1
    for step, (a, b) in enumerate(zip(one["policy_grads"], two["policy_grads"])):
        assert a.abs().max() > 0
        assert (a - b).abs().max().item() < 1e-6, f"{name}: policy gradient of step {step} differs"
    for step, (a, b) in enumerate(zip(one["critic_grads"], two["critic_grads"])):
        assert (a - b).abs().max().item() < 1e-6, f"{name}: critic gradient of step {step} differs"
    assert len(one["critic_grads"]) == len(two["critic_grads"]) == (len(one["policy_grads"])
                                                                   if algorithms.get(name).critic else 0)
    for key, value in one["metrics"].items():
        assert two["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), f"{name}: {key}"
