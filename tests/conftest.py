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
