"""Experiment trackers: a run watched live, and compared with others, in the tools labs already use.

    runtime:
      trackers: [tensorboard]      # any of tensorboard, wandb, mlflow, together; [] for none

metrics.jsonl stays the record the report reads; a tracker is a second, live view of the same figures. Every
stage logs through the stage framework (rank 0 only): its config and manifest facts when it opens
(hyperparameters, versions, hashes), every metrics.jsonl row as it is written, its summary when it ends
(timing, memory, the eval results) and how it ended. ``remax-bench report`` logs the report's tables and
plots as one more run, named ``report``. Runs are named ``<stage>/seed<k>`` and grouped by suite:

    tensorboard  results/<suite>/tensorboard/<stage>/seed<k>/, through torch's SummaryWriter
                 (`tensorboard --logdir results/<suite>/tensorboard`)
    wandb        project $WANDB_PROJECT or remax-bench, group <suite>, job type <stage>; offline under
                 results/<suite>/wandb/ unless WANDB_API_KEY is set (or WANDB_MODE says otherwise);
                 `wandb sync results/<suite>/wandb/offline-run-*` uploads an offline run later
    mlflow       experiment <suite> in $MLFLOW_TRACKING_URI, else in a SQLite store under the results
                 folder, results/<suite>/mlflow/mlflow.db, artifacts beside it (MLflow's plain-file store
                 is in maintenance mode and refuses to open by default; SQLite is its local store now)

Each library is imported only when its tracker starts. A missing one is a preflight problem
(``missing_packages``), so a run never starts without the view it asked for. A tracker that fails later (a
full disk, a lost connection) is dropped with a warning in the manifest: it never takes a training down.
Scalars keep their float64 values where the tool allows it (TensorBoard double tensors, wandb JSON, MLflow),
so what a tool shows equals metrics.jsonl.
"""

from __future__ import annotations

import importlib.util
import json
import math
import numbers
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

WANDB_PROJECT = "remax-bench"


@dataclass(frozen=True)
class RunName:
    """Who logs: one stage and seed of a suite (or its report), and the suite's results folder."""

    suite: str
    stage: str
    seed: int | None
    root: Path

    @property
    def label(self) -> str:
        return self.stage if self.seed is None else f"{self.stage}/seed{self.seed}"


def scalars(values: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) record, keyed by their path: ``time_split_s/generate``; a list of
    records that have names (the eval stage's rows) by those names: ``rows/remax/win_rate``. Text, flags and
    missing or non-finite figures are left out: a tracker shows no number the record does not hold."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, name + "/"))
        elif isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
            for row in value:
                out.update(scalars({k: v for k, v in row.items() if k != "name"}, f"{name}/{row['name']}/"))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = value
    return out


def flat(values: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (``shared.kl_coef``); lists and nulls as their JSON text."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value, sort_keys=True, default=str)
    return out


def markdown_table(columns, rows) -> str:
    """A markdown table (TensorBoard's text view renders markdown)."""
    lines = ["| " + " | ".join(str(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows])


class Tracker:
    """One tool's view of one run. ``hyperparameters`` is the resolved suite; ``facts`` the manifest's
    identity of the run (stage, seed, hashes, versions, git sha, device, overrides)."""

    name = ""
    module = ""  # what is imported
    package = ""  # what pip installs

    def __init__(self, run: RunName, hyperparameters: dict, facts: dict):
        self.run = run

    def log(self, step: int, values: dict[str, float]) -> None:
        """One metrics.jsonl row's figures at its step."""

    def log_summary(self, values: dict[str, float]) -> None:
        """The run's final figures (summary.json)."""

    def log_report(self, folder: Path, tables: dict, images: dict[str, Path]) -> None:
        """The report's tables (pandas frames by name) and plots (PNG files by title)."""

    def close(self, status: str, manifest: dict | None = None) -> None:
        """The run ended: completed, failed or interrupted; the final manifest travels with it."""

    def where(self) -> str:
        """Where this run's view is, for the stage log."""
        return ""


class TensorBoardTracker(Tracker):
    name, module, package = "tensorboard", "tensorboard", "tensorboard"

    def __init__(self, run: RunName, hyperparameters: dict, facts: dict):
        super().__init__(run, hyperparameters, facts)
        from torch.utils.tensorboard import SummaryWriter

        self.dir = run.root / "tensorboard" / run.label
        shutil.rmtree(self.dir, ignore_errors=True)  # an attempt replaces the last one, as its results do
        self.writer = SummaryWriter(log_dir=str(self.dir), flush_secs=10)
        self.hyperparameters = flat(hyperparameters)
        self.summary: dict[str, float] = {}
        self.step = 0
        self.writer.add_text("config", "```\n" + json.dumps(hyperparameters, indent=2, sort_keys=True) + "\n```")
        self.writer.add_text("run", markdown_table(("field", "value"), flat(facts).items()))

    def log(self, step: int, values: dict[str, float]) -> None:
        self.step = step
        for key, value in values.items():
            # A float64 tensor, not the float32 of plain scalar events: byte counts and rewards stay exact.
            self.writer.add_scalar(key, value, step, new_style=True, double_precision=True)

    def log_summary(self, values: dict[str, float]) -> None:
        self.summary = {f"summary/{k}": v for k, v in values.items()}
        self.log(self.step, self.summary)

    def log_report(self, folder: Path, tables: dict, images: dict[str, Path]) -> None:
        import matplotlib.image

        for name, frame in tables.items():
            self.writer.add_text(name, markdown_table(frame.columns, frame.itertuples(index=False)))
        for title, path in images.items():
            self.writer.add_image(title, matplotlib.image.imread(str(path)), dataformats="HWC")

    def close(self, status: str, manifest: dict | None = None) -> None:
        from torch.utils.tensorboard.summary import hparams

        if manifest is not None:
            self.writer.add_text("manifest", "```\n" + json.dumps(manifest, indent=2, sort_keys=True, default=str)
                                 + "\n```")
        # The HParams view lines the runs of a suite up by their settings and final figures. Its metrics are the
        # summary scalars already written above, so only the three hparams records are added, in this run's dir.
        params = {k: v for k, v in self.hyperparameters.items() if isinstance(v, (bool, int, float, str))}
        params["status"] = status
        for record in hparams(params, self.summary):
            self.writer.file_writer.add_summary(record)
        self.writer.close()

    def where(self) -> str:
        return f"TensorBoard events in {self.dir} (tensorboard --logdir {self.run.root / 'tensorboard'})"


def wandb_mode() -> str:
    """WANDB_MODE when set; else online with an API key, offline without (nothing leaves the machine)."""
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


class WandbTracker(Tracker):
    name, module, package = "wandb", "wandb", "wandb"

    def __init__(self, run: RunName, hyperparameters: dict, facts: dict):
        super().__init__(run, hyperparameters, facts)
        import wandb

        run.root.mkdir(parents=True, exist_ok=True)
        self.mode = wandb_mode()
        self.wandb = wandb
        seed = [f"seed{run.seed}"] if run.seed is not None else []
        self.handle = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or WANDB_PROJECT, group=run.suite, job_type=run.stage,
            name=f"{run.suite}/{run.label}", tags=[run.suite, run.stage, *seed],
            config={"suite": hyperparameters, **facts}, dir=str(run.root), mode=self.mode, reinit="create_new",
            # stdout and stderr stay the stage's own: the runner reads its progress lines from them.
            settings=wandb.Settings(console="off", silent=True),
        )

    def log(self, step: int, values: dict[str, float]) -> None:
        self.handle.log(values, step=step)

    def log_summary(self, values: dict[str, float]) -> None:
        # Prefixed, as in the other tools: wandb's summary also holds each history key's last value.
        self.handle.summary.update({f"summary/{k}": v for k, v in values.items()})

    def log_report(self, folder: Path, tables: dict, images: dict[str, Path]) -> None:
        logged = {name: self.wandb.Table(dataframe=frame) for name, frame in tables.items()}
        logged.update({title: self.wandb.Image(str(path)) for title, path in images.items()})
        self.handle.log(logged)

    def close(self, status: str, manifest: dict | None = None) -> None:
        if manifest is not None:  # files in the run's folder travel with it (and are uploaded by wandb sync)
            (Path(self.handle.dir) / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        self.handle.finish(exit_code=0 if status == "completed" else 1)

    def where(self) -> str:
        if self.mode == "offline":
            return f"wandb offline run in {Path(self.handle.dir).parent} (upload later: wandb sync <that folder>)"
        return f"wandb run {self.handle.url or self.handle.id} ({self.mode})"


def mlflow_location(root: Path) -> tuple[str, str | None]:
    """(tracking URI, artifact location): $MLFLOW_TRACKING_URI with MLflow's own artifact default, else a
    SQLite store and an artifact folder under the suite's results folder."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], None
    folder = Path(root).resolve() / "mlflow"
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


class MLflowTracker(Tracker):
    name, module, package = "mlflow", "mlflow", "mlflow"
    STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
    BATCH = 100  # MLflow takes at most 100 params per log_batch call

    def __init__(self, run: RunName, hyperparameters: dict, facts: dict):
        super().__init__(run, hyperparameters, facts)
        import logging

        # MLflow 3 sends usage telemetry by default; nothing leaves the machine unless a user asks for it.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        for name in ("alembic", "mlflow.store.db.utils"):  # schema set-up chatter on a new store
            logging.getLogger(name).setLevel(logging.WARNING)
        self.uri, artifacts = mlflow_location(run.root)
        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment = self.client.get_experiment_by_name(run.suite)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(run.suite, artifact_location=artifacts))
        tags = {k: str(v) for k, v in flat(facts).items()}
        tags.update(suite=run.suite, stage=run.stage, **({"seed": str(run.seed)} if run.seed is not None else {}))
        self.run_id = self.client.create_run(experiment_id, run_name=run.label, tags=tags).info.run_id
        self.step = 0
        params = [Param(k, str(v)) for k, v in flat(hyperparameters).items()]
        for start in range(0, len(params), self.BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + self.BATCH])

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        self.step = step
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        for start in range(0, len(metrics), 1000):  # MLflow's limit of metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def log_summary(self, values: dict[str, float]) -> None:
        self.log(self.step, {f"summary/{k}": v for k, v in values.items()})

    def log_report(self, folder: Path, tables: dict, images: dict[str, Path]) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path="report")

    def close(self, status: str, manifest: dict | None = None) -> None:
        if manifest is not None:
            self.client.log_dict(self.run_id, json.loads(json.dumps(manifest, default=str)), "manifest.json")
        self.client.set_terminated(self.run_id, self.STATUS.get(status, "FAILED"))

    def where(self) -> str:
        return f"MLflow run {self.run_id} in {self.uri}"


TRACKERS: dict[str, type[Tracker]] = {t.name: t for t in (TensorBoardTracker, WandbTracker, MLflowTracker)}
NAMES = tuple(TRACKERS)


def describe(names, root: Path) -> list[str]:
    """Where each tracker of a run can be watched, one line each (nothing is created)."""
    lines = []
    for name in names:
        if name == "tensorboard":
            lines.append(f"tracker tensorboard: tensorboard --logdir {Path(root) / 'tensorboard'}")
        elif name == "wandb":
            where = (f"offline runs in {Path(root) / 'wandb'} (wandb sync uploads them; WANDB_API_KEY streams live)"
                     if wandb_mode() == "offline" else f"{wandb_mode()}, project "
                     f"{os.environ.get('WANDB_PROJECT') or WANDB_PROJECT}, group {Path(root).name}")
            lines.append(f"tracker wandb: {where}")
        elif name == "mlflow":
            uri = mlflow_location(root)[0]
            lines.append(f"tracker mlflow: mlflow ui --backend-store-uri {uri} (experiment {Path(root).name})")
    return lines


def missing_packages(names) -> list[str]:
    """One line per chosen tracker whose library is not installed."""
    return [f"runtime.trackers: {name!r} needs the {TRACKERS[name].package} package, which is not installed "
            f"(pip install {TRACKERS[name].package}, or pip install 'remax-bench[trackers]' for all three); "
            f"or leave {name} out (--tracker none logs to metrics.jsonl only)"
            for name in names if name in TRACKERS and importlib.util.find_spec(TRACKERS[name].module) is None]


def _warn(message: str) -> None:
    print(f"[warning] {message}", file=sys.stderr, flush=True)


class Trackers:
    """The trackers a run logs to, as one. A tracker that fails to start or to log is dropped with a warning;
    the run goes on with the others (metrics.jsonl is the record, a tracker a view of it)."""

    def __init__(self, names, run: RunName | None = None, hyperparameters: dict | None = None,
                 facts: dict | None = None, warn: Callable[[str], None] = _warn):
        self.warn = warn
        self.active: list[Tracker] = []
        for name in names:
            try:
                tracker = TRACKERS[name](run, hyperparameters or {}, facts or {})
            except Exception as err:  # noqa: BLE001 - any failure of a view leaves the run alone
                warn(f"tracker {name} did not start, the run goes on without it: {type(err).__name__}: {err}")
                continue
            self.active.append(tracker)
            print(f"[tracker] {tracker.where()}", file=sys.stderr, flush=True)

    def _each(self, method: str, *args) -> None:
        for tracker in list(self.active):
            try:
                getattr(tracker, method)(*args)
            except Exception as err:  # noqa: BLE001
                self.active.remove(tracker)
                self.warn(f"tracker {tracker.name} failed in {method} and is dropped, the run goes on: "
                          f"{type(err).__name__}: {err}")

    def log(self, step: int, values: dict[str, float]) -> None:
        if values:
            self._each("log", step, values)

    def log_summary(self, values: dict[str, float]) -> None:
        self._each("log_summary", values)

    def log_report(self, folder: Path, tables: dict, images: dict[str, Path]) -> None:
        self._each("log_report", folder, tables, images)

    def close(self, status: str, manifest: dict | None = None) -> list[str]:
        """End every run; the names of the trackers that logged it to the end."""
        self._each("close", status, manifest)
        closed, self.active = [t.name for t in self.active], []
        return closed
