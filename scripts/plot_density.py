"""Snakemake adapter for rule plot_density: see gradscope.pipeline.render_density."""
from gradscope.logs import log_to
from gradscope.pipeline import render_density

with log_to(snakemake.log[0]):
    render_density(snakemake.params.plots, curvature_paths=snakemake.input.curvature, out=snakemake.output[0],
                   run_id=snakemake.params.run_id)
