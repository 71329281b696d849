"""Every training stage, killed with SIGKILL mid-stage and run again, ends with the weights of an uninterrupted run,
byte for byte (CPU, one process): the stages come from the registry (every algorithm) plus SFT and the reward model.

Each stage checkpoints every 3 iterations and is killed right after iteration 4 is logged (tests/fixtures/
killed_stage.py), so iteration 3 onwards is lost and redone from the checkpoint. The runner runs the suite again
until every stage is complete: a killed stage blocks the stages that need it, which are killed in turn on the next
run. Marked ``slow`` (minutes: 27 stage processes); `make test-resume` and CI run it. Two ranks under ZeRO-2 and
ZeRO-3: tests/test_multirank.py. The crash and signal paths on their own: tests/test_checkpoint.py.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from remax_bench.core import algorithms
from remax_bench.core.suite_file import load_suite_text
from remax_bench.runner import Runner, plan

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
NANO = FIXTURES / "nano.yaml"
STAGES = ("sft", "reward_model", *algorithms.NAMES)
EVERY, KILL_AT = 3, 4  # checkpoints after iterations 3 and 6; the kill after iteration 4 loses iterations 3-4


def stage_env(extra: dict | None = None) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(FIXTURES), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(extra or {})}


class KillingRunner(Runner):
    """The runner, with each stage started through tests/fixtures/killed_stage.py."""

    def command(self, item, **share):
        command = []
        for part in super().command(item, **share):
            command += ["killed_stage", part] if part == item.module else [part]
        return command


def every_stage_suite():
    data = yaml.safe_load(NANO.read_text())
    for name in algorithms.NAMES:
        data.setdefault(name, {})["enabled"] = True
    data["ppo"]["ppo_epochs"] = 2  # shuffled mini-batches: torch's RNG between the updates
    data["grpo"]["epochs"] = 2
    data["shared"].update(iterations=6, reward_normalize=True)  # running reward statistics
    data["sft"]["epochs"] = data["reward_model"]["epochs"] = 2  # 8 steps: the resumed pass goes on into the next
    data["runtime"]["checkpoint_every"] = EVERY
    return load_suite_text(yaml.safe_dump(data))


@dataclass
class Runs:
    reference: Path
    resumed: Path
    attempts: list  # the outcomes of each run of the killing runner
    console: list[str]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    root = tmp_path_factory.mktemp("resume")
    suite = every_stage_suite()
    mp = pytest.MonkeyPatch()
    for key, value in stage_env({"REMAX_BENCH_KILL_AT": str(KILL_AT)}).items():
        mp.setenv(key, value)
    try:
        console: list[str] = []
        reference = Runner(suite, root / "reference", echo=console.append).run(plan(suite))
        assert all(o.status == "completed" for o in reference), "\n".join(console)
        attempts = []
        for _ in range(len(STAGES)):
            outcomes = KillingRunner(suite, root / "resumed", echo=console.append).run(plan(suite))
            attempts.append(outcomes)
            if all(o.status in ("completed", "skipped") for o in outcomes):
                break
    finally:
        mp.undo()
    return Runs(root / "reference" / suite.name, root / "resumed" / suite.name, attempts, console)


@pytest.mark.parametrize("stage", STAGES)
def test_a_killed_stage_resumes_to_the_weights_of_an_uninterrupted_run(runs, stage):
    key = f"{stage}/seed0"
    kills = [o for outcomes in runs.attempts for o in outcomes if o.key == key and o.status == "failed"]
    assert [o.detail for o in kills] == ["killed by signal 9"], "\n".join(runs.console)
    final, reference = runs.resumed / stage / "seed0", runs.reference / stage / "seed0"
    assert (final / "checkpoint" / "model.safetensors").read_bytes() == \
        (reference / "checkpoint" / "model.safetensors").read_bytes()
    assert f"[resume] {stage}: resumed from iteration {EVERY} (" in "\n".join(runs.console)  # the console
    assert f"resumed from iteration {EVERY}" in (final / "stage.log").read_text()  # and the stage's log
    summary = json.loads((final / "summary.json").read_text())
    assert summary["resumed_from"] == [EVERY]
    rows = [json.loads(line)["step"] for line in (final / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(summary["iterations"]))  # each iteration's row once, the redone ones included
    assert not (final.parent / ".seed0.checkpoints").exists()
