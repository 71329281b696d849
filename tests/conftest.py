import os

import pytest

# Every stage a test runs (in this process or as a subprocess) stops at the first suite field it reads outside
# what remax_bench/core/identity.py declares for it: a declaration that fell behind its stage fails the tests.
os.environ.setdefault("REMAX_BENCH_STRICT_READS", "1")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow (minutes each)")


def pytest_collection_modifyitems(config, items):
    import importlib.util

    # The real vLLM engine (CPU build here) starts in ~40 s per engine: only `make test-vllm` (and CI) runs it.
    has_vllm = importlib.util.find_spec("vllm") is not None
    skip_vllm = pytest.mark.skip(reason="vllm: run with REMAX_BENCH_VLLM=1 (make test-vllm)" if has_vllm else
                                 "vllm: the vllm package is not installed (make install-vllm)")
    run_vllm = has_vllm and os.environ.get("REMAX_BENCH_VLLM") == "1"
    # Real Slurm jobs need the one-node cluster that `make test-slurm` starts (scripts/slurm-local.sh).
    skip_slurm = pytest.mark.skip(reason="slurm: run with REMAX_BENCH_SLURM=1 (make test-slurm starts the cluster)")
    run_slurm = os.environ.get("REMAX_BENCH_SLURM") == "1"
    for item in items:
        if "vllm" in item.keywords and not run_vllm:
            item.add_marker(skip_vllm)
        if "slurm" in item.keywords and not run_slurm:
            item.add_marker(skip_slurm)
    if config.getoption("--runslow") or os.environ.get("REMAX_BENCH_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or REMAX_BENCH_SLOW=1 (make test-slow)")
    skip_multirank = pytest.mark.skip(reason="multirank: run with REMAX_BENCH_MULTIRANK=1 (make test-multirank)")
    multirank = os.environ.get("REMAX_BENCH_MULTIRANK") == "1"
    skip_wheel = pytest.mark.skip(reason="wheel: run with REMAX_BENCH_WHEEL=1 (make test-wheel)")
    wheel = os.environ.get("REMAX_BENCH_WHEEL") == "1"
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
        elif "multirank" in item.keywords and not multirank:
            item.add_marker(skip_multirank)
        elif "wheel" in item.keywords and not wheel:
            item.add_marker(skip_wheel)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread; two OpenMP threads spin-wait on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
