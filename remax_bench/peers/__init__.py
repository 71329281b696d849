"""Other libraries' trainers of the same algorithms, run on the same work as ours (`remax-bench bench --against`)."""
