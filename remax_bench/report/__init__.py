"""`remax-bench report`: results/<suite>/ -> reports/<suite>/ (tables, plots and one HTML page).

Every complete stage directory (``results/<suite>/<stage>/seed<k>/``) is read into tidy pandas frames:
one row per stage and seed (summary.json flattened, plus the manifest's device and hashes), one row per
logged step (metrics.jsonl), one row per evaluated checkpoint and eval seed (the eval stage's ``rows``).
From those the report writes

```
reports/<suite>/
  summary.csv    one row per algorithm and seed: the key figures, and the ratios against PPO
  summary.md     mean ± std over seeds per algorithm, ReMax (and DPO) against PPO beside the paper's figures,
                 what differed between the algorithms' configurations, failed or missing stages, the plots
  *.png          reward and KL against step and wall time, peak memory by component, time per iteration by
                 phase, win rate and MT-bench score (when eval ran), held-out gold reward
  index.html     all of the above on one self-contained page (PNGs linked relatively)
```

Ratios against PPO are formed within one results directory only: the same machine, the same shared block.
"""

from remax_bench.report.load import OTHER_MEMORY, ReportError, SuiteResults, eval_rows, load_results
from remax_bench.report.plots import PLOT_FILES, make_plots, memory_breakdown, time_breakdown
from remax_bench.report.render import resolve_suite_name, write_report
from remax_bench.report.tables import aggregate_table, paper_table, ratios_vs_ppo, summary_table, what_differed

__all__ = ["OTHER_MEMORY", "PLOT_FILES", "ReportError", "SuiteResults", "aggregate_table", "eval_rows", "load_results",
           "make_plots", "memory_breakdown", "paper_table", "ratios_vs_ppo", "resolve_suite_name", "summary_table",
           "time_breakdown", "what_differed", "write_report"]
