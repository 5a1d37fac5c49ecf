"""Issue 28, items 5 and 6: every config file error names the file (`gradscope validate`, and
`gradscope run`, which checks the config Snakemake will run before starting it); `validate` and
Snakemake agree on what is a config; a printed fix command carries the invocation's config."""

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from gradscope import artifacts
from gradscope.cli import main
from gradscope.config import ConfigError, load_config_files, read_config_file
from support.workflow import BASE  # the tiny experiment of the earlier matrix
from support.workflow import copy_workflow
from support.workflow import snakemake as run_snakemake

# Each case: the file's bytes, and what the message says after the file's name (None: a config).
FILES = {
    "empty": (b"", "this config file is empty"),
    "blank": (b"\n  \n", "this config file is empty"),
    "comments only": (b"# nothing yet\n", "this config file holds no keys"),
    "null": (b"null\n", "this config file holds no keys"),
    "YAML error": (b"experiments:\n  a: {data: {generator: modular}\n  b: 1\n", ", line 3, column 3: not valid YAML"),
    "tab indentation": (b"experiments:\n\ta: 1\n", ", line 2, column 1: not valid YAML"),
    "plain text": (b"hello world\n", ", line 1, column 1: a config is a mapping of keys"),
    "a list": (b"- 1\n- 2\n", ", line 1, column 1: a config is a mapping of keys"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\xff", ", line 1, column 1: not a text file"),
    "JSON, empty object": (b"{}", None),
    "a config that extends": (yaml.safe_dump({"extend_experiments": True, "device": "cpu"}).encode(), None),
}


def write(folder: Path, case: str) -> Path:
    path = folder / (re.sub(r"\W+", "_", case) + ".yaml")
    path.write_bytes(FILES[case][0])
    return path


@pytest.mark.parametrize("case", list(FILES))
def test_every_config_file_error_names_the_file(tmp_path, case, monkeypatch):
    path = write(tmp_path, case)
    expected = FILES[case][1]
    if expected is None:
        assert isinstance(read_config_file(path), dict)
        return
    with pytest.raises(ConfigError) as err:
        read_config_file(path)
    assert str(err.value).startswith(f"{path}{'' if expected.startswith(',') else ': '}{expected}"), str(err.value)
    assert "Traceback" not in str(err.value)
    # through the command line: validate, and run (which stops before Snakemake starts)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(BASE))
    for command in (["validate", path.name], ["run", "-n", "--cores", "1", "--configfile", path.name]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and result.output.startswith(f"Error: {path.name}"), (command, result.output)
    # the workflow's own config file: validate names it, as the Snakefile does (its check_config_file)
    (tmp_path / "config" / "config.yaml").write_bytes(FILES[case][0])
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "mine.yaml")])
    assert result.exit_code == 1 and result.output.startswith("Error: config/config.yaml"), result.output


def test_run_names_the_files_of_a_bad_value_and_the_config_override(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(BASE))
    bad = copy.deepcopy(BASE)
    bad["experiments"]["e"]["optim"]["lr"] = -1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    result = CliRunner().invoke(main, ["run", "-n", "--configfile", "bad.yaml"])
    assert result.exit_code == 1 and result.output.startswith("Error: config/config.yaml then bad.yaml: invalid gradscope")
    assert "experiments.e.optim.lr: -1" in result.output
    result = CliRunner().invoke(main, ["run", "-n", "--config", "experiments={e: {optim: {lr: -2}}}"])
    assert result.exit_code == 1 and result.output.startswith("Error: config/config.yaml then --config: invalid")
    assert "experiments.e.optim.lr: -2" in result.output
    # --replace-workflow-config: config/config.yaml is not read (as Snakemake and the workflow do)
    result = CliRunner().invoke(main, ["run", "-n", "--replace-workflow-config", "--configfile", "bad.yaml"])
    assert result.exit_code == 1 and result.output.startswith("Error: bad.yaml: invalid gradscope config")


def test_load_config_files_composes_as_the_workflow_does(tmp_path):
    default, mine = tmp_path / "default.yaml", tmp_path / "mine.yaml"
    other = copy.deepcopy(BASE)
    other["experiments"] = {"other": other["experiments"]["e"]}
    default.write_text(yaml.safe_dump(other))
    mine.write_text(yaml.safe_dump({"extend_experiments": True, **BASE}))
    assert sorted(load_config_files([mine], default=default)["experiments"]) == ["e", "other"]
    assert sorted(load_config_files([mine], default=default, replace_workflow_config=True)["experiments"]) == ["e"]
    # the default given as a --configfile too is read once, in its place (here: after mine, so it replaces)
    assert sorted(load_config_files([mine, default], default=default)["experiments"]) == ["other"]


def test_fix_command_carries_the_invocation(monkeypatch):
    path = "results/runs/e/seed~0/train/checkpoints/step=15.pt"
    args = artifacts.invocation_args(["my dir/mine.yaml"], ["experiments={e: {train: {steps: 20}}}"])
    hint = artifacts.regenerate_hint(path, args)
    first, then = re.findall(r"`([^`]*)`", hint)
    assert first == ("snakemake --cores 2 --configfile 'my dir/mine.yaml' --config 'experiments={e: {train: {steps: 20}}}' "
                     "--force results/runs/e/seed~0/train/metrics.parquet")
    assert then == first.rsplit(" --force", 1)[0]
    # a job's own message: the invocation that started it (set by workflow/rules/common.smk)
    monkeypatch.setenv(artifacts.INVOCATION_ENV, json.dumps(args))
    assert artifacts.regenerate_hint(path) == hint
    # outside a workflow invocation (gradscope show): the command, and a word on what it may need
    monkeypatch.delenv(artifacts.INVOCATION_ENV)
    assert "add the --configfile and --config the run was made with" in artifacts.regenerate_hint(path)
    assert "add the" not in artifacts.regenerate_hint(path, [])


# ---- with real Snakemake -------------------------------------------------------------------
def gradscope(cwd, *args):
    """The `gradscope` command line in a subprocess (run starts Snakemake in its own)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", "from gradscope.cli import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True, env=env)


@pytest.mark.workflow
@pytest.mark.slow
def test_validate_run_and_snakemake_agree_on_every_config_file(tmp_path):
    # Refused by Snakemake (its own message names no file) exactly where validate refuses (naming it);
    # a config that validate accepts, gradscope run passes to Snakemake, which plans it (exit status 0).
    cwd = copy_workflow(tmp_path / "wf", BASE)
    for case, (_, expected) in FILES.items():
        path = write(cwd, case)
        valid = CliRunner().invoke(main, ["validate", str(path), "--default", str(cwd / "config" / "config.yaml")])
        assert (valid.exit_code == 0) == (expected is None), (case, valid.output)
        if expected is None:
            snake = gradscope(cwd, "run", "-n", "--cores", "1", "--configfile", path.name)
            assert "resolve_config" in snake.stdout + snake.stderr, (case, snake.stderr[-2000:])
        else:
            snake = run_snakemake(cwd, "-n", "--cores", "1", "--configfile", path.name, check=False)
        assert (snake.returncode == 0) == (expected is None), (case, snake.stderr[-800:])
    run = gradscope(cwd, "run", "-n", "--cores", "1", "--configfile", write(cwd, "YAML error").name)
    assert run.returncode == 1 and run.stderr.startswith("Error: YAML_error.yaml, line 3, column 3"), run.stderr[-800:]
    assert "Building DAG" not in run.stdout + run.stderr  # Snakemake did not start
    # Snakemake's exit status is kept: 1 for a target the workflow does not have
    run = gradscope(cwd, "run", "-n", "--cores", "1", "no/such/target")
    assert run.returncode == 1 and "no/such/target" in run.stdout + run.stderr, run.stderr[-2000:]
    # the workflow's own config file, empty: refused by the Snakefile (naming it) and by validate
    (cwd / "config" / "config.yaml").write_text("")
    snake = run_snakemake(cwd, "-n", "--cores", "1", check=False)
    assert snake.returncode != 0 and "config/config.yaml: this config file is empty" in snake.stderr + snake.stdout


@pytest.mark.workflow
@pytest.mark.slow
def test_the_printed_fix_command_for_a_damaged_checkpoint_works_as_printed(tmp_path, monkeypatch):
    # The workflow's own config has another experiment: the run exists only with --configfile, and
    # --config changes its steps (the command must carry both, or it fails or trains something else).
    default = copy.deepcopy(BASE)
    default["experiments"] = {"other": default["experiments"]["e"]}
    cwd = copy_workflow(tmp_path / "wf", default)
    (cwd / "my config.yaml").write_text(yaml.safe_dump(BASE))
    invocation = ["--configfile", "my config.yaml", "--config", "experiments={e: {train: {steps: 20}}}"]
    target = "results/runs/e/seed~0/train/metrics.parquet"
    run_snakemake(cwd, "--cores", "1", target, *invocation)
    manifest = cwd / "results/runs/e/seed~0/train/manifest.json"
    written = json.loads(manifest.read_text())
    assert sorted(map(int, written["checkpoints"])) == [0, 15, 20]
    checkpoint = manifest.parent / written["checkpoints"]["15"]
    whole = checkpoint.read_bytes()
    checkpoint.write_bytes(whole[:1000])
    proc = run_snakemake(cwd, "-n", "--cores", "1", target, *invocation)
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("gradscope: damaged artifact ")]
    command = re.findall(r"`([^`]*)`", line)[0]
    assert command == ("snakemake --cores 2 --configfile 'my config.yaml' --config 'experiments={e: {train: {steps: 20}}}' "
                       f"--force {target}"), line
    # as printed, in a shell, with the environment's snakemake on PATH
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # outside the workflow, `gradscope show` prints the same command, from the run's invocation.json
    monkeypatch.delenv(artifacts.INVOCATION_ENV, raising=False)
    monkeypatch.chdir(cwd)
    shown = CliRunner().invoke(main, ["show", "e/seed~0"])
    assert f"`{command}`" in shown.output, shown.output
    proc = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert artifacts.damaged_checkpoints(manifest) == []
    assert sorted(map(int, json.loads(manifest.read_text())["checkpoints"])) == [0, 15, 20]  # the same config's run
    # without the invocation's config, the same target is unknown to the workflow (the KeyError)
    proc = run_snakemake(cwd, "-n", "--cores", "1", "--force", target, check=False)
    assert proc.returncode != 0
