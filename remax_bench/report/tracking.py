"""The report, logged to the trackers its runs logged to: one more run, named ``report``, beside the stages'
runs of the suite, holding the report's tables and plots (remax_bench/core/trackers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from remax_bench.core.trackers import RunName, Trackers
from remax_bench.report.load import SuiteResults


def trackers_of(res: SuiteResults) -> list[str]:
    """The trackers the suite's stages logged to (runtime.trackers of their manifests), in first-seen order."""
    names: dict[str, None] = {}
    for _, manifest in sorted(res.manifests.items()):
        suite = (manifest.get("config") or {}).get("suite") or {}
        for name in (suite.get("runtime") or {}).get("trackers") or []:
            names[name] = None
    return list(names)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def log_report(res: SuiteResults, out: Path, tables: dict[str, pd.DataFrame], plots: dict[str, Path],
               warn=_stderr) -> list[str]:
    """Log the report (the files in ``out``, its tables and plots) to the suite's trackers; returns their names.

    A tracker whose library is missing where the report is made, or that fails, is skipped with a warning: the
    report's own files are written already and stay the record."""
    names = trackers_of(res)
    if not names:
        return []
    suite = next(m["config"]["suite"] for _, m in sorted(res.manifests.items())
                 if isinstance((m.get("config") or {}).get("suite"), dict))
    facts = {"suite_name": res.name, "stages": sorted(f"{stage}/seed{seed}" for stage, seed in res.manifests),
             "suite_hashes": sorted({m.get("suite_hash") for m in res.manifests.values() if m.get("suite_hash")})}
    trackers = Trackers(names, RunName(res.name, "report", None, Path(res.path)), suite, facts,
                        warn=lambda message: warn(f"warning: {message}"))
    trackers.log_report(out, {name: frame for name, frame in tables.items() if not frame.empty}, plots)
    return trackers.close("completed")
