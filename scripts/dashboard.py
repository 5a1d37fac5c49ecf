"""Snakemake adapter for rule dashboard: see gradscope.dashboard.build_sweep_dashboard."""
from gradscope.dashboard import build_sweep_dashboard
from gradscope.logs import log_to

with log_to(snakemake.log[0]):
    build_sweep_dashboard(snakemake.wildcards.experiment, snakemake.params.runs, results="results",
                          settings=snakemake.params.dashboard, out=snakemake.output[0])
