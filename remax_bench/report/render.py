"""Writing the report: summary.csv, summary.md and index.html around the tables and plots."""

from __future__ import annotations

import html
import json
import math
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from remax_bench.comparison import PAPER
from remax_bench.report.load import (
    LABELS,
    SEED_DIR,
    ReportError,
    SuiteResults,
    load_results,
    requested_algorithms,
)
from remax_bench.report.plots import (
    PLOT_FILES,
    make_plots,
)
from remax_bench.report.tables import (
    _eval_judge,
    _num,
    _reference,
    _suite_hashes,
    aggregate_table,
    environment_lines,
    paper_table,
    preparation_lines,
    summary_table,
    what_differed,
)


# -- writing -------------------------------------------------------------------------------------
def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_no rows_"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def _problem_lines(res: SuiteResults) -> list[str]:
    return [f"{p['stage']}/seed{p['seed']}: {p['status']} — {p['detail']}" for p in
            sorted(res.problems, key=lambda p: (p["stage"], p["seed"]))]


def resolve_suite_name(results_dir: Path, suite_name: str | None) -> tuple[Path, str]:
    """(results root, suite name): a given name; else the only suite in results_dir; else results_dir itself
    when it is a suite directory (holds <stage>/seed<k>/)."""
    if suite_name:
        return results_dir, suite_name
    if not results_dir.is_dir():
        raise ReportError(f"{results_dir}/ does not exist (run `remax-bench run SUITE` first)")
    if any(SEED_DIR.match(d.name) for s in results_dir.iterdir() if s.is_dir() for d in s.iterdir()):
        return results_dir.parent, results_dir.name
    suites = sorted(p.name for p in results_dir.iterdir() if p.is_dir())
    if len(suites) == 1:
        return results_dir, suites[0]
    if not suites:
        raise ReportError(f"no suite results in {results_dir}/ (run `remax-bench run SUITE` first)")
    raise ReportError(f"{results_dir}/ holds several suites ({', '.join(suites)}); name one")


def write_report(results_dir: str | Path, reports_dir: str | Path, suite_name: str | None = None,
                 dpi: int = 110) -> Path:
    """Write reports/<suite>/ (summary.csv, summary.md, PNGs, index.html) and return the index.html path."""
    root, name = resolve_suite_name(Path(results_dir), suite_name)
    res = load_results(root, name)
    out = Path(reports_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    for stale in PLOT_FILES:  # a plot the current results no longer allow must not linger from an older report
        (out / stale).unlink(missing_ok=True)

    table = summary_table(res)
    table.to_csv(out / "summary.csv", index=False, float_format="%.6g")
    reference = _reference(res)
    agg = aggregate_table(table, reference)
    judge = _eval_judge(res)
    paper = paper_table(table, judge, reference)
    differed = what_differed(res.manifests)
    env = environment_lines(res)
    problems = _problem_lines(res)
    prep = preparation_lines(res)
    plots, omitted = make_plots(res, table, out, dpi)
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    suite_hash = _suite_hashes(res)
    # Only what the suite asked for: an algorithm it leaves disabled is not missing.
    missing_algos = [LABELS[a] for a in requested_algorithms(res.manifests) if not res.has(a)]

    md = [
        f"# remax-bench report: {name}",
        "",
        f"Suite `{name}`, config hash `{suite_hash}`, generated {generated} from `{res.path}`.",
        "",
        "## Summary (mean ± std over seeds)",
        "",
        _md_table(agg),
        "",
        "Final reward and KL: the stage's summary figure, else the mean of the last 10% of logged steps. "
        "Peak memory and model states in MiB (2^20 bytes). Per-seed figures: `summary.csv`.",
        "",
        *(["Starting points: " + "; ".join(prep) + ".", ""] if prep else []),
        "## ReMax vs PPO: this run and the paper",
        "",
        _md_table(paper),
        "",
        f"The paper's figures are the paper's ({PAPER['citation']}): {PAPER['setting']} for memory and speed; "
        f"{PAPER['quality_setting']}. This run's model, data and hardware differ, so compare directions and "
        "rough sizes, not digits.",
        "",
        "## What differed",
        "",
        "- configuration (models, data, shared, runtime blocks of ppo / remax / dpo): "
        + ("none" if not differed else ""),
        *[f"  - {line}" for line in differed],
        *[f"- {line}" for line in env],
        "",
        "## Failed or missing stages",
        "",
        *([f"- {line}" for line in problems] or ["none"]),
        *([f"- algorithms without a result: {', '.join(missing_algos)}"] if missing_algos else []),
        "",
        "## Plots",
        "",
    ]
    for p in plots:
        md += [f"### {p.title}", "", f"![{p.title}]({p.file})", "", p.caption, ""]
    if omitted:
        md += ["Left out:", "", *[f"- {o}" for o in omitted], ""]
    variance = _variance_section(root / name, out)
    md += variance
    (out / "summary.md").write_text("\n".join(md))

    index = out / "index.html"
    page = _html(name, suite_hash, generated, res, agg, table, paper, differed, env, problems, missing_algos, plots,
                 omitted, prep)
    if variance:
        e = html.escape
        table_rows = [line.strip("|").split("|") for line in variance if line.startswith("| ") and "---" not in line]
        cells = "".join("<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{e(c.strip())}</{'th' if i == 0 else 'td'}>"
                                          for c in row) + "</tr>" for i, row in enumerate(table_rows))
        page = page.replace("</body></html>", f"<h2>Policy-gradient variance</h2><p>{e(variance[2])}</p>"
                            f"<div class='scroll'><table>{cells}</table></div>"
                            "<figure><img src='variance.png' alt='variance'></figure>"
                            "</body></html>")
    index.write_text(page)
    return index


def _variance_section(suite_dir: Path, out: Path) -> list[str]:
    """The gradient-variance measurement (`remax-bench variance`), when one was made for this suite."""
    path = suite_dir / "variance" / "variance.json"
    (out / "variance.png").unlink(missing_ok=True)
    if not path.is_file():
        return []
    from remax_bench.variance import variance_markdown

    record = json.loads(path.read_text())
    if (suite_dir / "variance" / "variance.png").is_file():
        shutil.copyfile(suite_dir / "variance" / "variance.png", out / "variance.png")
    return ["## Policy-gradient variance", "",
            f"`remax-bench variance` on `{record['checkpoint']}` (reward: {record['reward']}): {record['repeats']} "
            f"batches of {record['answers']} generated answers per estimator (greedy answers count), k = "
            f"{record['k']}; trace of the covariance of the gradient over the batches, and the same divided by "
            "the squared norm of the mean gradient (scale-free: GRPO's division by the std rescales g).", "",
            *variance_markdown(record), "", "![Policy-gradient variance](variance.png)", ""]


# The page's tables were looked at in headless Chromium 1280 px wide (chromium --headless --window-size=1280,4000
# --screenshot): with every registered algorithm and three seeds, the summary by figure (nine columns,
# 'mean ± std' wrapping) and the per-seed tables fill at most the body's 1100 px; the summary with a column per
# figure (17) was 1561 px wide and ran off the page. tests/test_report.py holds the column counts.
def by_figure(agg: pd.DataFrame) -> pd.DataFrame:
    """The summary with one row per figure and one column per algorithm: its width grows with the algorithms
    a suite runs (at most the registry's), not with the figures, so it fits the page. Figures no algorithm
    has are left out (summary.csv keeps every column)."""
    if agg.empty:
        return agg
    table = agg.set_index("algorithm").T.rename_axis("figure").reset_index()
    table.columns.name = None
    return table[(table.drop(columns="figure") != "–").any(axis=1)].reset_index(drop=True)


# Runs (algorithm and seed) side by side in one per-seed table: with the field names and the widest values
# (a memory kind such as rss_above_baseline) five fit the page's 1100 px.
RUNS_PER_TABLE = 5


def per_seed(table: pd.DataFrame) -> list[pd.DataFrame]:
    """summary.csv with one row per field and one column per algorithm and seed, numbers as shown; in tables
    of at most RUNS_PER_TABLE runs each, of as even a size as the runs allow."""
    if table.empty:
        return []
    names = [f"{LABELS.get(a, a)} seed {int(s)}" for a, s in zip(table["algorithm"], table["seed"])]
    values = table.drop(columns=["algorithm", "seed"]).map(
        lambda v: _num(v) if isinstance(v, float) else ("–" if v is None or v is pd.NA else str(v)))
    out = values.T
    out.columns = names
    out = out.rename_axis("field").reset_index()
    size = math.ceil(len(names) / math.ceil(len(names) / RUNS_PER_TABLE))
    return [out[["field", *names[start:start + size]]] for start in range(0, len(names), size)]


def _html_table(df: pd.DataFrame) -> str:
    """A table in a box that scrolls sideways when the table is wider than the page, rather than the page."""
    return f"<div class='scroll'>{df.to_html(index=False, border=0, escape=True)}</div>"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.92em;color:#444}
.meta{color:#555}.paper{background:#fff8e1;padding:.6em 1em;border-left:4px solid #f0b400}
.warn{color:#a00}code{background:#f5f5f5;padding:0 .2em}
"""


def _html(name, suite_hash, generated, res, agg, table, paper, differed, env, problems, missing_algos, plots,
          omitted, prep) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>remax-bench report: {e(name)}</title><style>{CSS}</style></head><body>",
        f"<h1>remax-bench report: {e(name)}</h1>",
        f"<p class='meta'>Suite <code>{e(name)}</code> · config hash <code>{e(suite_hash)}</code> · "
        f"generated {e(generated)} from <code>{e(str(res.path))}</code></p>",
        "<h2>Summary (mean ± std over seeds)</h2>",
        _html_table(by_figure(agg)) if not agg.empty else "<p>No policy stage finished.</p>",
        "<p>Final reward and KL: the stage's summary figure, else the mean of the last 10% of logged steps. "
        "Memory in MiB. Per-seed figures: <a href='summary.csv'>summary.csv</a> (also "
        "<a href='summary.md'>summary.md</a>).</p>",
        "<details><summary>Per seed</summary>",
        *[_html_table(part) for part in per_seed(table)],
        "</details>",
        f"<p>Starting points: {e('; '.join(prep))}.</p>" if prep else "",
        "<h2>ReMax vs PPO: this run and the paper</h2>",
        _html_table(paper),
        f"<p class='paper'>The right-hand column holds the <b>paper's</b> figures ({e(PAPER['citation'])}): "
        f"{e(PAPER['setting'])} for memory and speed; {e(PAPER['quality_setting'])}. This run's model, data and "
        "hardware differ: compare directions and rough sizes, not digits.</p>",
        "<h2>What differed</h2><ul>",
        "<li>configuration (models, data, shared, runtime blocks of ppo / remax / dpo): "
        + ("none</li>" if not differed
           else "<ul>" + "".join(f"<li class='warn'>{e(d)}</li>" for d in differed) + "</ul></li>"),
        *[f"<li{' class=warn' if 'DIFFERS' in line else ''}>{e(line)}</li>" for line in env],
        "</ul>",
        "<h2>Failed or missing stages</h2>",
        "<ul>" + "".join(f"<li class='warn'>{e(p)}</li>" for p in problems)
        + (f"<li class='warn'>algorithms without a result: {e(', '.join(missing_algos))}</li>" if missing_algos else "")
        + "</ul>" if problems or missing_algos else "<p>none</p>",
        "<h2>Plots</h2>",
    ]
    for p in plots:
        parts.append(f"<figure><img src='{e(p.file)}' alt='{e(p.title)}'><figcaption><b>{e(p.title)}.</b> "
                     f"{e(p.caption)}</figcaption></figure>")
    if omitted:
        parts.append("<p>Left out:</p><ul>" + "".join(f"<li>{e(o)}</li>" for o in omitted) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
