"""Snakemake adapter for rule plots: see gradscope.pipeline.render_plots."""
from gradscope.logs import log_to
from gradscope.pipeline import render_plots

with log_to(snakemake.log[0]):
    render_plots(snakemake.params.plots, metrics_path=snakemake.input.metrics, summary_path=snakemake.input.summary,
                 curvature_paths=snakemake.input.curvature, training_png=snakemake.output.training,
                 flagged_png=snakemake.output.flagged, curvature_png=snakemake.output.curvature,
                 run_id=snakemake.params.run_id)
