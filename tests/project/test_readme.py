import re
from support.workflow import REPO


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    run_cmd, test_cmd = blocks[0], blocks[1]
    assert "snakemake --cores 2" in run_cmd and "torch==2.13.0" in run_cmd
    assert "pytest" in test_cmd and "torch==2.13.0" in test_cmd
    assert test_cmd in (REPO / ".ci" / "run").read_text()
