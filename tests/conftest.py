import torch

# One intra-op thread: these tests use tiny models, where a second thread only adds overhead,
# and on a loaded 2-core machine two threads per process thrash.
torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def done(tmp_path_factory):
    """A complete run of tests/configs/tiny.yaml (once per session; tests/test_workflow.py and
    tests/test_workflow_values.py read it)."""
    import yaml
    from test_workflow import TINY, copy_workflow, snakemake

    cwd = copy_workflow(tmp_path_factory.mktemp("wf"), yaml.safe_load(TINY.read_text()))
    snakemake(cwd, "--cores", "2")
    return cwd
