"""Snakemake adapter for rule plot_timeline: see gradscope.pipeline.render_timeline."""
from gradscope.logs import log_to
from gradscope.pipeline import render_timeline

with log_to(snakemake.log[0]):
    i = snakemake.input
    render_timeline(snakemake.params.plots, metrics_path=i.metrics, curvature_paths=i.curvature, events_path=i.events,
                    summary_path=i.summary, group_losses_path=i.group_losses, out=snakemake.output[0],
                    run_id=snakemake.params.run_id)
