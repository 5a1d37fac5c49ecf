"""Helpers the test modules share (plain functions, classes and constants, no tests and no fixtures:
fixtures live in tests/conftest.py). A test module imports them as `from support.<theme> import ...`
(tests/ is on sys.path through `pythonpath` in pyproject.toml); no test module imports another.

- workflow: the repository root, the tiny config, copying the workflow and running Snakemake on it
- engine: tiny training runs, the loop reference of the per-example statistics, killing a job mid-run
- browser: loading a dashboard in the headless browser and reading its figures
- curvature: problems with a known Hessian or spectrum
- signals: trajectories with planted opposing groups
- sources: tiny data sets in their real file formats
- recorder: a hand-written PyTorch loop recorded with the Recorder
- integrations: runs recorded by the Lightning and Hugging Face callbacks
"""
