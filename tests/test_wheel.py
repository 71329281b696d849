"""The built wheel carries the named suites: installed into a fresh virtual environment and run from a folder
outside the checkout, `remax-bench validate tiny` and `remax-bench run tiny --dry-run` work.

The wheel is built from the files a fresh clone has (tracked, or untracked and not ignored), installed without
its dependencies; the fresh environment reaches them through a path file naming this interpreter's
site-packages (a plain path entry: the .pth files there, such as an editable install's finder, are not run).
About a minute on 2 cores: `make test-wheel` (CI) runs it.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.wheel

REPO = Path(__file__).resolve().parents[1]


def _sh(cmd: list, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _clone_files(dest: Path) -> None:
    """The checkout's files as a clone has them (links kept as links)."""
    listed = _sh(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO).stdout
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if not os.path.lexists(source):
            continue  # deleted in the work tree, not yet committed
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)


def test_the_wheel_runs_named_suites_from_a_fresh_venv(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to know which files a clone has")
    src, dist, venv, elsewhere = (tmp_path / d for d in ("src", "dist", "venv", "elsewhere"))
    _clone_files(src)
    _sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, src],
        tmp_path)
    wheel, = dist.glob("remax_bench-*.whl")
    _sh([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    python = venv / "bin" / "python"
    _sh([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel], tmp_path)
    purelib = Path(_sh([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip())
    (purelib / "_remax_bench_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    where = _sh([python, "-c", "from remax_bench.core.config import SUITES_DIR; print(SUITES_DIR)"], elsewhere, env)
    suites = Path(where.stdout.strip())
    assert suites.is_relative_to(purelib) and suites.is_dir() and not suites.is_symlink()
    assert (suites / "tiny.yaml").is_file() and (suites / "baselines" / "tiny.json").is_file()

    cli = venv / "bin" / "remax-bench"
    validated = _sh([cli, "validate", "tiny"], elsewhere, env)
    assert "suite 'tiny' is valid" in validated.stderr
    planned = _sh([cli, "run", "tiny", "--dry-run", "--results-dir", tmp_path / "results"], elsewhere, env)
    assert "sft/seed0: will run" in planned.stdout and f"{python} -m trainers.sft" in planned.stdout, planned.stdout
    assert not (tmp_path / "results" / "tiny" / "sft" / "seed0").exists()  # a dry run trains nothing
