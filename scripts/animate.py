"""Snakemake adapter for rule animate: see gradscope.pipeline.render_animation."""
from gradscope.logs import log_to
from gradscope.pipeline import render_animation

with log_to(snakemake.log[0]):
    render_animation(snakemake.params.plots, examples_paths=snakemake.input.examples,
                     detections_path=snakemake.input.detections, gif_path=snakemake.output.gif,
                     frames_dir=snakemake.output.frames, run_id=snakemake.params.run_id)
