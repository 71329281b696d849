import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow (minutes each)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("REMAX_BENCH_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or REMAX_BENCH_SLOW=1 (make test-slow)")
    skip_multirank = pytest.mark.skip(reason="multirank: run with REMAX_BENCH_MULTIRANK=1 (make test-multirank)")
    multirank = os.environ.get("REMAX_BENCH_MULTIRANK") == "1"
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
        elif "multirank" in item.keywords and not multirank:
            item.add_marker(skip_multirank)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread; two OpenMP threads spin-wait on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
