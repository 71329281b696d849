"""Writing the report: summary.csv, summary.md and index.html around the tables and plots."""

from __future__ import annotations

import html
import json
import math
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from remax_bench import uncertainty
from remax_bench.comparison import PAPER
from remax_bench.core.algorithms import FOCUS, PREPARATION_STAGES
from remax_bench.report.frontier import FRONTIER_FILE, build_frontier, frontier_plot
from remax_bench.report.headline import build_headline
from remax_bench.report.load import (
    LABELS,
    SEED_DIR,
    ReportError,
    SuiteResults,
    load_sweep,
    requested_algorithms,
)
from remax_bench.report.plots import (
    PLOT_FILES,
    Plot,
    make_plots,
)
from remax_bench.report.tables import (
    _eval_judge,
    _num,
    _reference,
    _suite_hashes,
    aggregate_table,
    environment_lines,
    judging_notes,
    kl_lines,
    override_lines,
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


def _warning_lines(res: SuiteResults) -> list[str]:
    """Every warning a finished stage recorded in its manifest (trimmed prompts, temperatures, unjudged items...)."""
    return [f"{stage}/seed{seed}: {w}" for (stage, seed), m in sorted(res.manifests.items())
            for w in m.get("warnings") or []]


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


@dataclass
class ViewSections:
    """The sections of one value of a sweep (of the whole suite without one), ready for summary.md and index.html."""

    res: SuiteResults
    table: pd.DataFrame
    agg: pd.DataFrame
    paper: pd.DataFrame
    differed: list[str]
    env: list[str]
    kl: list[str]
    notes: list[str]  # why a judged figure is what it is (not estimable LC fits...)
    prep: list[str]
    plots: list[Plot]
    omitted: list[str]
    folder: str  # where its plots are, relative to the report ("" or the sweep value)

    @property
    def heading(self) -> str:
        return f"### {self.res.variant}" if self.res.variant else ""


def _view_sections(res: SuiteResults, table: pd.DataFrame, out: Path, dpi: int) -> ViewSections:
    folder = res.variant
    plot_dir = out / folder if folder else out
    plot_dir.mkdir(parents=True, exist_ok=True)
    reference = _reference(res)
    plots, omitted = make_plots(res, table, plot_dir, dpi)
    for plot in plots:
        plot.file = f"{folder}/{plot.file}" if folder else plot.file
    return ViewSections(res, table, aggregate_table(table, reference), paper_table(table, _eval_judge(res), reference),
                        what_differed(res.manifests), environment_lines(res) + override_lines(res.manifests),
                        kl_lines(res), judging_notes(table), preparation_lines(res), plots, omitted, folder)


def _remove_stale_plots(out: Path) -> None:
    """A plot the current results no longer allow must not linger from an older report (nor a sweep value's)."""
    for folder in [out, *(p for p in out.iterdir() if p.is_dir())]:
        for stale in (*PLOT_FILES, FRONTIER_FILE):
            (folder / stale).unlink(missing_ok=True)


def write_report(results_dir: str | Path, reports_dir: str | Path, suite_name: str | None = None,
                 dpi: int = 110) -> Path:
    """Write reports/<suite>/ (summary.csv, summary.md, PNGs, index.html) and return the index.html path. A sweep's
    values each get their summary, paper and plot sections (plots under reports/<suite>/<value>/); the headline and
    the reward-KL frontier span them all."""
    root, name = resolve_suite_name(Path(results_dir), suite_name)
    views = load_sweep(root, name)
    out = Path(reports_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_plots(out)

    tables = [summary_table(res) for res in views]
    sweep = len(views) > 1 or bool(views[0].variant)
    csv = pd.concat([t.assign(variant=res.variant) for res, t in zip(views, tables)], ignore_index=True) if sweep \
        else tables[0]
    csv.to_csv(out / "summary.csv", index=False, float_format="%.6g")
    frontier = build_frontier(views, tables)
    frontier_plot_drawn = not frontier.points.empty
    if frontier_plot_drawn:
        frontier_plot(frontier, out / FRONTIER_FILE, dpi)
    headline = build_headline(views, tables, frontier)
    sections = [_view_sections(res, table, out, dpi) for res, table in zip(views, tables)]
    warnings = list(dict.fromkeys(line for res in views for line in _warning_lines(res)))
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    # A sweep's values each have their suite (the preparation stages ran with the first value's).
    suite_hash = "; ".join(f"{res.variant}: {_suite_hashes(res, skip=PREPARATION_STAGES)}" for res in views) \
        if sweep else _suite_hashes(views[0])
    problems = list(dict.fromkeys(line for res in views for line in _problem_lines(res)))
    # Only what the suite asked for: an algorithm it leaves disabled is not missing.
    missing_algos = [LABELS[a] for a in requested_algorithms(views[0].manifests)
                     if not any(res.has(a) for res in views)]
    sweep_line = (f"Sweep: {', '.join(res.variant for res in views)}; each value is a run of every algorithm, the "
                  "SFT and reward models are shared where the swept field is not theirs." if sweep else "")

    md = [
        f"# remax-bench report: {name}",
        "",
        f"Suite `{name}`, config hash `{suite_hash}`, generated {generated} from `{views[0].path}`.",
        "",
        *([sweep_line, ""] if sweep_line else []),
        *_headline_markdown(headline, frontier, frontier_plot_drawn),
        "## Summary (mean [95% CI] over seeds)",
        "",
    ]
    for view in sections:
        md += [*([view.heading, ""] if view.heading else []), _md_table(view.agg), ""]
        md += [*(f"- {line}" for line in view.kl), *([""] if view.kl else [])]
        md += [*(["Notes:", "", *[f"- {line}" for line in view.notes], ""] if view.notes else [])]
        md += [*(["Starting points: " + "; ".join(view.prep) + ".", ""] if view.prep else [])]
    md += [
        INTERVAL_TEXT + " Final reward and KL: the stage's summary figure, else the mean of the last 10% of logged "
        "steps. Peak memory and model states in MiB (2^20 bytes). A judged figure that leaves items out says how many "
        "beside it. Per-seed figures: `summary.csv`.",
        "",
        "## ReMax vs PPO: this run and the paper",
        "",
    ]
    for view in sections:
        md += [*([view.heading, ""] if view.heading else []), _md_table(view.paper), ""]
    md += [
        f"The paper's figures are the paper's ({PAPER['citation']}): {PAPER['setting']} for memory and speed; "
        f"{PAPER['quality_setting']}. This run's model, data and hardware differ, so compare directions and "
        "rough sizes, not digits.",
        "",
        "## What differed",
        "",
    ]
    for view in sections:
        md += [*([view.heading, ""] if view.heading else []),
               "- configuration (models, data, shared, runtime blocks of the algorithms): "
               + ("none" if not view.differed else ""),
               *[f"  - {line}" for line in view.differed],
               *[f"- {line}" for line in view.env], ""]
    md += [
        "## Failed or missing stages",
        "",
        *([f"- {line}" for line in problems] or ["none"]),
        *([f"- algorithms without a result: {', '.join(missing_algos)}"] if missing_algos else []),
        "",
        "## Warnings",
        "",
        *([f"- {line}" for line in warnings] or ["none"]),
        "",
        "## Plots",
        "",
    ]
    for view in sections:
        md += [*([view.heading, ""] if view.heading else [])]
        for p in view.plots:
            md += [f"### {p.title}" if not view.heading else f"#### {p.title}", "", f"![{p.title}]({p.file})", "",
                   p.caption, ""]
        if view.omitted:
            md += ["Left out:", "", *[f"- {o}" for o in view.omitted], ""]
    variance = _variance_section(root / name, out)
    md += variance
    (out / "summary.md").write_text("\n".join(md))

    index = out / "index.html"
    page = _html(name, suite_hash, generated, views[0].path, sweep_line, headline, frontier, frontier_plot_drawn,
                 sections, problems, missing_algos, warnings)
    if variance:
        e = html.escape
        table_rows = [line.strip("|").split("|") for line in variance if line.startswith("| ") and "---" not in line]
        cells = "".join("<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{e(c.strip())}</{'th' if i == 0 else 'td'}>"
                                          for c in row) + "</tr>" for i, row in enumerate(table_rows))
        page = page.replace("</body></html>", f"<h2>Policy-gradient variance</h2><p>{e(variance[2])}</p>"
                            f"<table>{cells}</table><figure><img src='variance.png' alt='variance'></figure>"
                            "</body></html>")
    index.write_text(page)
    from remax_bench.report.tracking import log_report

    logged_tables, logged_plots = {}, {}
    for view in sections:
        prefix = f"{view.res.variant}/" if view.heading else ""  # a sweep's values side by side
        logged_tables.update({f"{prefix}summary": view.agg, f"{prefix}per_seed": view.table,
                              f"{prefix}remax_vs_ppo": view.paper})
        logged_plots.update({f"plots/{prefix}{Path(p.file).stem}": out / p.file for p in view.plots})
    if frontier_plot_drawn:
        logged_plots[f"plots/{Path(FRONTIER_FILE).stem}"] = out / FRONTIER_FILE
    log_report(views[0], out, logged_tables, logged_plots)
    return index


INTERVAL_TEXT = ("Intervals: 95% over seeds, rliable's stratified bootstrap (percentile, "
                 f"{uncertainty.REPS} resamples); with two seeds an interval is the range of the seeds; one seed "
                 "shows its value alone.")


def _headline_markdown(headline, frontier, drawn: bool) -> list[str]:
    md = [f"## Headline: {headline.quality} at equal iterations and at equal KL (mean [95% CI] over seeds)", "",
          _md_table(headline.table), "", *[f"{note}" for note in headline.notes], ""]
    if not headline.improvement.empty:
        md += [f"### Against {LABELS[FOCUS]}: probability of improvement", "",
               f"P(X > {LABELS[FOCUS]}): the chance that a run of X scores higher than a run of "
               f"{LABELS[FOCUS]} (ties half), with its 95% interval; 0.5 is a tie.", "",
               _md_table(headline.improvement), "", *[f"- {line}" for line in headline.words], ""]
    md += ["## Reward-KL frontier", ""]
    if drawn:
        md += [f"![Reward-KL frontier]({FRONTIER_FILE})", "", _frontier_caption(frontier), ""]
    else:
        md += ["No frontier: no online algorithm recorded both a KL to the reference and a quality figure.", ""]
    md += [*(f"- left out: {line}" for line in frontier.left_out), *([""] if frontier.left_out else [])]
    return md


def _frontier_caption(frontier) -> str:
    kappa = (f" The dashed line is the equal KL ({frontier.equal_kl:.3g} nats), the largest every run of every "
             "algorithm reaches; the headline reads each run's frontier there." if not math.isnan(frontier.equal_kl)
             else "")
    return (f"{frontier.score} against the KL to the reference: {frontier.kl_text}. Points are single evaluations "
            "(marker: the sweep value); the line is the mean over seeds of each seed's frontier (the best score "
            "reached at no more KL, linearly interpolated between its corners), shaded between the lowest and "
            f"highest seed.{kappa}")


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


def _html(name, suite_hash, generated, path, sweep_line, headline, frontier, drawn, sections, problems,
          missing_algos, warnings=()) -> str:
    e = html.escape

    def table_html(df):
        return _html_table(df) if not df.empty else "<p>none</p>"

    parts = [
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>remax-bench report: {e(name)}</title><style>{CSS}</style></head><body>",
        f"<h1>remax-bench report: {e(name)}</h1>",
        f"<p class='meta'>Suite <code>{e(name)}</code> · config hash <code>{e(suite_hash)}</code> · "
        f"generated {e(generated)} from <code>{e(str(path))}</code></p>",
        f"<p>{e(sweep_line)}</p>" if sweep_line else "",
        f"<h2>Headline: {e(headline.quality)} at equal iterations and at equal KL (mean [95% CI] over seeds)</h2>",
        table_html(headline.table), *[f"<p>{e(note)}</p>" for note in headline.notes],
    ]
    if not headline.improvement.empty:
        parts += [f"<h3>Against {e(LABELS[FOCUS])}: probability of improvement</h3>",
                  f"<p>P(X &gt; {e(LABELS[FOCUS])}): the chance that a run of X scores higher than a run of "
                  f"{e(LABELS[FOCUS])} (ties half), with its 95% interval; 0.5 is a tie.</p>",
                  table_html(headline.improvement),
                  "<ul>" + "".join(f"<li>{e(line)}</li>" for line in headline.words) + "</ul>"]
    parts.append("<h2>Reward-KL frontier</h2>")
    if drawn:
        parts.append(f"<figure><img src='{FRONTIER_FILE}' alt='Reward-KL frontier'><figcaption>"
                     f"{e(_frontier_caption(frontier))}</figcaption></figure>")
    else:
        parts.append("<p>No frontier: no online algorithm recorded both a KL to the reference and a quality "
                     "figure.</p>")
    if frontier.left_out:
        parts.append("<ul>" + "".join(f"<li>left out: {e(line)}</li>" for line in frontier.left_out) + "</ul>")
    parts.append("<h2>Summary (mean [95% CI] over seeds)</h2>")
    for view in sections:
        parts += [f"<h3>{e(view.res.variant)}</h3>" if view.heading else "",
                  _html_table(by_figure(view.agg)) if not view.agg.empty
                  else "<p>No policy stage finished.</p>",
                  "<ul>" + "".join(f"<li{' class=warn' if line.startswith('NOT MATCHED') else ''}>{e(line)}</li>"
                                   for line in view.kl) + "</ul>" if view.kl else "",
                  ("<p>Notes:</p><ul>" + "".join(f"<li>{e(n)}</li>" for n in view.notes) + "</ul>") if view.notes else "",
                  "<details><summary>Per seed</summary>",
                  *[_html_table(part) for part in per_seed(view.table)],
                  "</details>",
                  f"<p>Starting points: {e('; '.join(view.prep))}.</p>" if view.prep else ""]
    parts += [
        f"<p>{e(INTERVAL_TEXT)} Final reward and KL: the stage's summary figure, else the mean of the last 10% of "
        "logged steps. Memory in MiB. Per-seed figures: <a href='summary.csv'>summary.csv</a> (also "
        "<a href='summary.md'>summary.md</a>). A judged figure that leaves items out says how many beside it.</p>",
        "<h2>ReMax vs PPO: this run and the paper</h2>",
    ]
    for view in sections:
        parts += [f"<h3>{e(view.res.variant)}</h3>" if view.heading else "",
                  _html_table(view.paper)]
    parts += [
        f"<p class='paper'>The right-hand column holds the <b>paper's</b> figures ({e(PAPER['citation'])}): "
        f"{e(PAPER['setting'])} for memory and speed; {e(PAPER['quality_setting'])}. This run's model, data and "
        "hardware differ: compare directions and rough sizes, not digits.</p>",
        "<h2>What differed</h2>",
    ]
    for view in sections:
        parts += [f"<h3>{e(view.res.variant)}</h3>" if view.heading else "", "<ul>",
                  "<li>configuration (models, data, shared, runtime blocks of the algorithms): "
                  + ("none</li>" if not view.differed
                     else "<ul>" + "".join(f"<li class='warn'>{e(d)}</li>" for d in view.differed) + "</ul></li>"),
                  *[f"<li{' class=warn' if 'DIFFERS' in line else ''}>{e(line)}</li>" for line in view.env],
                  "</ul>"]
    parts += [
        "<h2>Failed or missing stages</h2>",
        "<ul>" + "".join(f"<li class='warn'>{e(p)}</li>" for p in problems)
        + (f"<li class='warn'>algorithms without a result: {e(', '.join(missing_algos))}</li>" if missing_algos else "")
        + "</ul>" if problems or missing_algos else "<p>none</p>",
        "<h2>Warnings</h2>",
        "<ul>" + "".join(f"<li class='warn'>{e(w)}</li>" for w in warnings) + "</ul>" if warnings else "<p>none</p>",
        "<h2>Plots</h2>",
    ]
    for view in sections:
        parts.append(f"<h3>{e(view.res.variant)}</h3>" if view.heading else "")
        for p in view.plots:
            parts.append(f"<figure><img src='{e(p.file)}' alt='{e(p.title)}'><figcaption><b>{e(p.title)}.</b> "
                         f"{e(p.caption)}</figcaption></figure>")
        if view.omitted:
            parts.append("<p>Left out:</p><ul>" + "".join(f"<li>{e(o)}</li>" for o in view.omitted) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(part for part in parts if part) + "\n"
