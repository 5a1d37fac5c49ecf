from pathlib import Path

from click.testing import CliRunner

from gradscope.cli import main, parse_run_name

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_commands():
    out = CliRunner().invoke(main, ["--help"]).output
    assert "runs" in out and "show" in out and "validate" in out


def test_parse_run_name():
    assert parse_run_name("wd~1.0_seed~0") == {"wd": "1.0", "seed": "0"}


def test_validate_lists_runs_of_the_default_config():
    result = CliRunner().invoke(main, ["validate", str(REPO / "config" / "config.yaml")])
    assert result.exit_code == 0, result.output
    assert "grokking/wd~1.0_seed~0" in result.output and "opposing/seed~0" in result.output


def test_validate_names_a_bad_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiments: {g: {data: {generator: modular}, optim: {lr: fast}}}\n")
    result = CliRunner().invoke(main, ["validate", str(bad)])
    assert result.exit_code != 0 and "experiments.g.optim.lr" in result.output and "'fast'" in result.output


def test_runs_without_results_says_what_to_do(tmp_path):
    result = CliRunner().invoke(main, ["runs", "--results", str(tmp_path)])
    assert result.exit_code != 0 and "snakemake" in result.output
