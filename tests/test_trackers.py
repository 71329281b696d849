"""Trackers for real, without a network: one ReMax stage on the nano model logs to TensorBoard, wandb (offline)
and MLflow (a SQLite store under the results folder) at once; each tool's files are read back with its own
library and compared with metrics.jsonl, summary.json and manifest.json."""

import json
import math
import os
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from remax_bench.cli import main
from remax_bench.core import trackers
from remax_bench.core.models import load_causal_lm, load_tokenizer, save_pretrained
from remax_bench.core.stage import StageRun, config_hash, stage_main
from remax_bench.core.suite_file import load_suite, load_suite_text
from remax_bench.preflight import problems
from trainers import online

FIXTURES = Path(__file__).parent / "fixtures"
NANO = FIXTURES / "nano.yaml"
sys.path.insert(0, str(FIXTURES))
from tracker_files import mlflow_runs, tensorboard_run, tensorboard_scalars, wandb_runs  # noqa: E402

OVERRIDES = ["shared.kl_coef=0.1", "runtime.trackers=[tensorboard, wandb, mlflow]"]


def _stage_config(tmp_path: Path, overrides=OVERRIDES) -> Path:
    """A ReMax stage config as the runner writes it, scored by the gold function (no reward model to train)."""
    data = yaml.safe_load(NANO.read_text())
    data["shared"]["reward_function"] = "gold"
    suite = load_suite_text(yaml.safe_dump(data), overrides=overrides)
    sft = tmp_path / "sft" / "seed0" / "checkpoint"
    save_pretrained(load_causal_lm("tiny:nano", seed=0), load_tokenizer("tiny:nano"), sft)
    path = tmp_path / ".configs" / "remax-seed0.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"stage": "remax", "seed": 0, "suite": suite.resolved(), "inputs": {"sft": str(sft)},
                                "input_ids": {}, "overrides": list(overrides)}))
    return path


@pytest.fixture(scope="module")
def logged(tmp_path_factory, one_torch_thread):
    """results/nano/remax/seed0 of one stage logged to all three trackers, nothing leaving the machine."""
    root = tmp_path_factory.mktemp("results") / "nano"
    config = _stage_config(root)
    hermetic = {"WANDB_CONFIG_DIR": root.parent / "wandb-config", "WANDB_CACHE_DIR": root.parent / "wandb-cache",
                "WANDB_DATA_DIR": root.parent / "wandb-data"}
    with pytest.MonkeyPatch.context() as patch:
        for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "MLFLOW_TRACKING_URI"):
            patch.delenv(name, raising=False)
        for name, value in hermetic.items():
            patch.setenv(name, str(value))
        out = root / "remax" / "seed0"
        assert stage_main("remax", online.train, ["--config", str(config), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    return root, rows, summary, manifest


def _figures(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def test_every_row_holds_the_figures_the_issue_names(logged):
    _, rows, summary, manifest = logged
    assert [r["step"] for r in rows] == [0, 1]
    for row in rows:
        assert {"reward_mean", "kl", "policy_loss", "peak_memory_bytes", "rss_bytes", "wall_time_s"} <= set(row)
    assert rows[-1]["peak_memory_bytes"] <= summary["peak_memory_bytes"]  # the peak so far, then the stage's
    assert manifest["config"]["overrides"] == OVERRIDES  # recorded with the run


def test_tensorboard_event_files_equal_metrics_jsonl(logged):
    root, rows, summary, manifest = logged
    folder = root / "tensorboard" / "remax" / "seed0"
    scalars = tensorboard_scalars(folder)
    for row in rows:
        for key, value in _figures(row).items():
            assert scalars[key][row["step"]] == value, key  # float64 tensors: equal, not close
    assert scalars["summary/peak_memory_bytes"][1] == summary["peak_memory_bytes"]
    assert scalars["summary/time_per_iteration_s"][1] == summary["time_per_iteration_s"]
    assert scalars["summary/model_state_bytes/policy/params"][1] == summary["model_state_bytes"]["policy"]["params"]
    run = tensorboard_run(folder)
    config = run.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"kl_coef": 0.1' in config
    assert manifest["config_hash"] in run.Tensors("manifest/text_summary")[0].tensor_proto.string_val[0].decode()
    # The HParams view: this run's settings beside its final figures.
    from tensorboard.plugins.hparams import metadata

    content = run.PluginTagToContent("hparams")
    start = metadata.parse_session_start_info_plugin_data(content["_hparams_/session_start_info"])
    assert start.hparams["shared.kl_coef"].number_value == 0.1
    assert start.hparams["status"].string_value == "completed"
    experiment = metadata.parse_experiment_plugin_data(content["_hparams_/experiment"])
    assert "summary/peak_memory_bytes" in {m.name.tag for m in experiment.metric_infos}


def test_wandb_offline_run_equals_metrics_jsonl(logged):
    root, rows, summary, manifest = logged
    runs = wandb_runs(root / "wandb")
    assert list(runs) == ["nano/remax/seed0"]
    run = runs["nano/remax/seed0"]
    header = run["run"]
    assert (header.run_group, header.job_type, list(header.tags)) == ("nano", "remax", ["nano", "remax", "seed0"])
    assert header.project == "remax-bench" and run["exit"] == 0
    assert run["config"]["suite"]["shared"]["kl_coef"] == 0.1
    assert run["config"]["config_hash"] == manifest["config_hash"] and run["config"]["overrides"] == OVERRIDES
    assert run["config"]["versions"]["torch"] == manifest["versions"]["torch"]
    for row in rows:
        logged_row = run["history"][row["step"]]
        for key, value in _figures(row).items():
            assert logged_row[key] == value, key
    assert run["summary"]["summary/peak_memory_bytes"] == summary["peak_memory_bytes"]
    assert run["summary"]["summary/final_reward_mean"] == summary["final_reward_mean"]
    assert run["summary"]["peak_memory_bytes"] == rows[-1]["peak_memory_bytes"]  # wandb's own: the last row
    saved = next((root / "wandb").glob("offline-run-*/files/manifest.json"))
    assert json.loads(saved.read_text())["config_hash"] == manifest["config_hash"]


def test_mlflow_run_equals_metrics_jsonl(logged):
    root, rows, summary, manifest = logged
    client, runs = mlflow_runs(f"sqlite:///{root.resolve() / 'mlflow' / 'mlflow.db'}", "nano")
    assert list(runs) == ["remax/seed0"]
    run = runs["remax/seed0"]
    assert run.info.status == "FINISHED"
    assert run.data.params["shared.kl_coef"] == "0.1" and run.data.params["shared.reward_function"] == "gold"
    tags = run.data.tags
    assert (tags["suite"], tags["stage"], tags["seed"]) == ("nano", "remax", "0")
    assert tags["config_hash"] == manifest["config_hash"] and tags["git_sha"] == str(manifest["git_sha"])
    for key in _figures(rows[0]):
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert history == {row["step"]: row[key] for row in rows}, key
    assert run.data.metrics["summary/peak_memory_bytes"] == summary["peak_memory_bytes"]
    saved = client.download_artifacts(run.info.run_id, "manifest.json", str(root.parent / "download"))
    assert json.loads(Path(saved).read_text())["config_hash"] == manifest["config_hash"]


def test_only_rank_0_logs(tmp_path, monkeypatch):
    config = json.loads(_stage_config(tmp_path, ["runtime.trackers=[tensorboard]"]).read_text())
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run = StageRun("remax", config, tmp_path / "remax" / "seed0")
    run.open()
    run.log(0, loss=1.0)
    run.fail("failed", "stopped by the test")
    assert not (tmp_path / "tensorboard").exists() and run.trackers.active == []
    monkeypatch.setenv("RANK", "0")
    run = StageRun("remax", config, tmp_path / "remax" / "seed0")
    run.open()
    run.log(0, loss=1.0)
    run.fail("failed", "stopped by the test")
    assert tensorboard_scalars(tmp_path / "tensorboard" / "remax" / "seed0")["loss"] == {0: 1.0}


def test_trackers_and_overrides_do_not_change_what_a_stage_is():
    """Resume compares config hashes: adding a tracker, or spelling a value with --set instead of in the file,
    must not retrain a finished stage; a changed value must."""
    plain = load_suite(NANO)
    watched = load_suite(NANO, ["runtime.trackers=[wandb, mlflow]"])
    same_value = load_suite(NANO, ["shared.kl_coef=0.05"])  # nano.yaml's own value
    assert plain.config_hash() == watched.config_hash() == same_value.config_hash()
    assert load_suite(NANO, ["shared.kl_coef=0.1"]).config_hash() != plain.config_hash()

    def stage(suite, overrides=()):
        return {"stage": "remax", "seed": 0, "suite": suite.resolved(), "inputs": {}, "overrides": list(overrides)}

    assert config_hash(stage(plain)) == config_hash(stage(watched, ["runtime.trackers=[wandb, mlflow]"]))
    assert config_hash(stage(plain)) != config_hash(stage(load_suite(NANO, ["shared.kl_coef=0.1"])))


def test_scalars_keep_numbers_only_and_name_rows():
    record = {"loss": 0.5, "steps": 3, "done": True, "note": "x", "missing": None, "nan": math.nan,
              "split": {"generate": 1.5, "train": 2.0}, "ids": [1, 2],
              "rows": [{"name": "remax", "win_rate": 61.0, "judge": "gold"}, {"name": "sft", "win_rate": 50.0}]}
    assert trackers.scalars(record) == {"loss": 0.5, "steps": 3, "split/generate": 1.5, "split/train": 2.0,
                                        "rows/remax/win_rate": 61.0, "rows/sft/win_rate": 50.0}


def test_a_tracker_that_fails_is_dropped_and_the_run_goes_on(tmp_path):
    warnings = []

    class Failing(trackers.Tracker):
        name = "failing"

        def log(self, step, values):
            raise OSError("disk full")

    name = trackers.RunName("nano", "remax", 0, tmp_path)
    group = trackers.Trackers(["tensorboard"], name, {"shared": {"kl_coef": 0.1}}, {}, warn=warnings.append)
    group.active.append(Failing(name, {}, {}))
    group.log(0, {"loss": 1.0})
    group.log(1, {"loss": 0.5})
    assert [t.name for t in group.active] == ["tensorboard"]
    assert warnings == ["tracker failing failed in log and is dropped, the run goes on: OSError: disk full"]
    assert group.close("completed") == ["tensorboard"]
    assert tensorboard_scalars(tmp_path / "tensorboard" / "remax" / "seed0")["loss"] == {0: 1.0, 1: 0.5}


def test_a_missing_tracker_library_is_a_preflight_problem(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets where it is not installed
    suite = load_suite(NANO, ["runtime.trackers=[tensorboard, wandb]"])
    found = problems(suite)
    assert found == ["runtime.trackers: 'wandb' needs the wandb package, which is not installed (pip install wandb, "
                     "or pip install 'remax-bench[trackers]' for all three); or leave wandb out (--tracker none logs "
                     "to metrics.jsonl only)"]
    result = CliRunner().invoke(main, ["run", str(NANO), "--tracker", "wandb", "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and "'wandb' needs the wandb package" in result.output, result.output
    assert not (tmp_path / "r").exists()
    dry = CliRunner().invoke(main, ["run", str(NANO), "--tracker", "tensorboard,wandb", "--dry-run",
                                    "--results-dir", str(tmp_path / "r")])
    assert dry.exit_code == 0 and "what would stop a real run here (1):" in dry.output, dry.output
    assert "tracker tensorboard: tensorboard --logdir" in dry.output
    assert not (tmp_path / "r").exists()


def test_describe_says_where_to_watch(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    lines = trackers.describe(["tensorboard", "wandb", "mlflow"], tmp_path / "nano")
    assert lines[0] == f"tracker tensorboard: tensorboard --logdir {tmp_path / 'nano' / 'tensorboard'}"
    assert lines[1].startswith(f"tracker wandb: offline runs in {tmp_path / 'nano' / 'wandb'}")
    assert lines[2] == (f"tracker mlflow: mlflow ui --backend-store-uri sqlite:///{tmp_path / 'nano' / 'mlflow'}"
                        "/mlflow.db (experiment nano)")
    assert not (tmp_path / "nano").exists()  # describing creates nothing
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert trackers.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert trackers.wandb_mode() == "disabled"
    assert os.environ["WANDB_MODE"] == "disabled"
