"""Snakemake adapter for rule dashboard: see gradscope.dashboard.build_sweep_dashboard."""
from gradscope import layout
from gradscope.dashboard import build_sweep_dashboard
from gradscope.logs import log_to
from gradscope.resources import use_threads

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads, torch_threads=False)  # the config's threads.dashboard
    build_sweep_dashboard(snakemake.wildcards.experiment, snakemake.params.runs, results=layout.RESULTS,
                          settings=snakemake.params.dashboard, out=snakemake.output[0])
