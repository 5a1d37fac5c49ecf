"""Shared fixtures and the marks of the inner loop. Shared helpers (plain functions and constants) live
in tests/support/, importable from any test folder (`pythonpath = ["tests"]` in pyproject.toml)."""

import socket

import torch

# One intra-op thread: these tests use tiny models, where a second thread only adds overhead,
# and on a loaded 2-core machine two threads per process thrash.
torch.set_num_threads(1)


import pytest  # noqa: E402

from gradscope import data  # noqa: E402

# Markers (registered in pyproject.toml). The inner loop, `python -m pytest -m "not slow"`, leaves out
# every test that runs Snakemake, a browser or a Slurm cluster, or takes over about 2 s alone; CI runs
# them all. A test is marked from the fixtures it uses (below), from its module's `pytestmark`
# (modules that run Snakemake themselves), or by `@pytest.mark.slow` at the test.
WORKFLOW_FIXTURES = {"done", "built", "cov", "twin", "folder_run", "cluster", "runs"}  # each runs Snakemake


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & WORKFLOW_FIXTURES:
            item.add_marker(pytest.mark.workflow)
        if "browser" in names:
            item.add_marker(pytest.mark.browser)
        if "cluster" in names:
            item.add_marker(pytest.mark.slurm)
        notebook = item.path.suffix == ".ipynb"  # the tutorials (nbmake): each runs a workflow
        if notebook or any(item.get_closest_marker(m) for m in ("workflow", "browser", "slurm")):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def done(tmp_path_factory):
    """A complete run of tests/configs/tiny.yaml (once per session; tests/workflow/test_workflow.py and
    tests/workflow/test_workflow_values.py read it)."""
    import yaml
    from support.workflow import TINY, copy_workflow, snakemake

    cwd = copy_workflow(tmp_path_factory.mktemp("wf"), yaml.safe_load(TINY.read_text()))
    snakemake(cwd, "--cores", "2")
    return cwd


@pytest.fixture(scope="session")
def browser():
    """Debian's headless chromium through chromedriver and selenium (the dashboards, the docs site).
    Where it cannot start, the browser tests skip with the reason, unless GRADSCOPE_REQUIRE_BROWSER=1
    (set by .ci/run): then they fail."""
    import os
    import shutil

    required = os.environ.get("GRADSCOPE_REQUIRE_BROWSER") == "1"
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    chromedriver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    try:
        from selenium import webdriver

        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(chromedriver))
    except Exception as e:  # selenium missing, no chromium, or it does not start
        reason = f"cannot start headless chromium ({chromium}, {chromedriver}): {type(e).__name__}: {str(e)[:300]}"
        if required:
            pytest.fail(f"GRADSCOPE_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    yield driver
    driver.quit()


@pytest.fixture
def tall(browser):
    """The session's browser, its window tall enough for a whole dashboard tab (plots and table, for a
    screenshot), then as it was."""
    size = browser.get_window_size()
    browser.set_window_size(1400, 1500)
    yield browser
    browser.set_window_size(size["width"], size["height"])


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ---- torchvision: its module, or the test skips ------------------------------------------------
@pytest.fixture
def tv():
    try:
        return data.import_torchvision()
    except ImportError:
        pytest.skip("torchvision is not installed (pip install -e '.[vision]')")
