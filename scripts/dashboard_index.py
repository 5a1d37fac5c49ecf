"""Snakemake adapter for rule dashboard_index: see gradscope.dashboard.build_index."""
from gradscope import layout
from gradscope.dashboard import build_index
from gradscope.logs import log_to

with log_to(snakemake.log[0]):
    build_index(snakemake.params.experiments, results=layout.RESULTS, out=snakemake.output[0], link_reports=True)
