"""`remax-bench report`: results/<suite>/ -> reports/<suite>/ (tables, plots and one HTML page).

Every complete stage directory (``results/<suite>/<stage>/seed<k>/``) is read into tidy pandas frames:
one row per stage and seed (summary.json flattened, plus the manifest's device and hashes), one row per
logged step (metrics.jsonl), one row per evaluated checkpoint and eval seed (the eval stage's ``rows``).
From those the report writes

```
reports/<suite>/
  summary.csv    one row per algorithm and seed (and sweep value): the key figures, and the ratios against PPO
  summary.md     the headline: the quality figure at equal iterations and at equal KL to the reference, every
                 algorithm against ReMax (probability of improvement, and in words whether the seeds tell them
                 apart); the reward-KL frontier; every figure per algorithm with its 95% interval over seeds; the
                 KL treatment (flagged where an algorithm departs from shared.kl); ReMax (and the others) against
                 PPO beside the paper's figures; what differed; failed or missing stages; the plots
  frontier.png   the reward-KL frontier (report/frontier.py)
  *.png          reward and KL against step and wall time, peak memory by component, time per iteration by
                 phase, win rate and MT-bench score (when eval ran), held-out gold reward; a sweep's values each
                 in their own folder <field>=<value>/
  index.html     all of the above on one self-contained page (PNGs linked relatively)
```

Ratios against PPO are formed within one results directory only: the same machine, the same shared block.
Intervals over seeds, the interquartile mean and the probability of improvement are rliable's
(remax_bench/uncertainty.py).
"""

from remax_bench.report.frontier import FRONTIER_FILE, Frontier, build_frontier, upper_envelope
from remax_bench.report.headline import Headline, build_headline
from remax_bench.report.load import OTHER_MEMORY, ReportError, SuiteResults, eval_rows, load_results, load_sweep
from remax_bench.report.plots import PLOT_FILES, make_plots, memory_breakdown, time_breakdown
from remax_bench.report.render import resolve_suite_name, write_report
from remax_bench.report.tables import aggregate_table, paper_table, ratios_vs_ppo, summary_table, what_differed

__all__ = ["FRONTIER_FILE", "Frontier", "Headline", "OTHER_MEMORY", "PLOT_FILES", "ReportError", "SuiteResults",
           "aggregate_table", "build_frontier", "build_headline", "eval_rows", "load_results", "load_sweep", "make_plots",
           "memory_breakdown", "paper_table", "ratios_vs_ppo", "resolve_suite_name", "summary_table", "time_breakdown",
           "upper_envelope", "what_differed", "write_report"]
