"""Snakemake adapter for rule plot_signals: see gradscope.pipeline.render_signal_plots."""
from gradscope.logs import log_to
from gradscope.pipeline import render_signal_plots

with log_to(snakemake.log[0]):
    i = snakemake.input
    render_signal_plots(snakemake.params.plots, metrics_path=i.metrics, meta_path=i.meta, groups_path=i.groups,
                        group_pairs_path=i.group_pairs, group_losses_path=i.group_losses,
                        loss_changes_path=i.loss_changes, per_example_path=i.per_example,
                        out=dict(snakemake.output.items()), run_id=snakemake.params.run_id)
