"""The command line's help says what the commands do: every stage `run --only` takes, from the registry, and
what `check` trains besides comparing."""

from click.testing import CliRunner

from remax_bench.cli import main


def test_help_names_every_stage_and_what_check_retrains():
    from remax_bench.core import algorithms

    run_help = " ".join(CliRunner().invoke(main, ["run", "--help"]).output.split())
    only = run_help[run_help.index("--only"):run_help.index("--seeds")]
    listed = only.split("of:")[1].split("(")[0].replace(",", " ").split()
    assert listed == [*algorithms.PREPARATION_STAGES, *algorithms.NAMES, "eval"]
    check_help = " ".join(CliRunner().invoke(main, ["check", "--help"]).output.split())
    assert "retrains ReMax" in check_help and "--no-reproduce skips" in check_help
