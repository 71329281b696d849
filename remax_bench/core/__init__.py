"""The layer below the trainers: suite configs, the algorithm registry, the stage framework, results, models,
data and measurements. Nothing here imports ``trainers`` or the application above it (``remax_bench.cli``,
``runner``, ``report``, ``bench``, ``check``, ``estimate``, ``variance``, ``evaluation``); tests/test_layers.py
holds every module to that."""
