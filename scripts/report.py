"""Snakemake adapter for rule report: see gradscope.pipeline.write_run_report."""
from gradscope.logs import log_to
from gradscope.pipeline import write_run_report

with log_to(snakemake.log[0]):
    i = snakemake.input
    write_run_report(run_id=snakemake.params.run_id, config_path=i.config, metrics_path=i.metrics,
                     summary_path=i.summary, curvature_paths=i.curvature, out=snakemake.output[0],
                     figures={"training": i.training, "flagged": i.flagged, "curvature": i.curvature_png, "gif": i.gif,
                              "group_losses": i.group_losses, "loss_changes": i.loss_changes, "cartography": i.cartography,
                              "density": i.density[0] if i.density else None,
                              "progress": i.progress[1] if i.progress else None, "timeline": i.timeline_png},
                     influence_path=i.influence[0] if i.influence else None,
                     progress_path=i.progress[0] if i.progress else None, timeline_path=i.timeline)
