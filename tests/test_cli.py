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


def test_train_command_writes_the_run_like_the_workflow(tmp_path):
    import pandas as pd
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"device": "cpu", "experiments": {"m": {
        "data": {"generator": "modular", "modular": {"p": 5, "train_fraction": 0.6}},
        "model": {"depth": 1, "width": 8}, "train": {"steps": 12, "log_every": 4, "checkpoints": {"every": 6}},
        "signals": {"opposing_groups": {"top_k": 5, "n_groups": 2}}}}}))  # 15 training pairs: top_k 20 would flag all
    result = CliRunner().invoke(main, ["train", "m/seed~0", "--config", str(config), "--results", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "training m/seed~0" in result.output and "test acc" in result.output
    run = tmp_path / "r" / "runs" / "m" / "seed~0"
    assert list(pd.read_parquet(run / "train" / "metrics.parquet")["step"]) == [0, 4, 8, 12]
    assert (run / "train" / "checkpoints" / "step_00000006.pt").exists() and (run / "config.yaml").exists()
    missing = CliRunner().invoke(main, ["train", "m/seed~7", "--config", str(config)])
    assert missing.exit_code != 0 and "m/seed~0" in missing.output
