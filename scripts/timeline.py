"""Snakemake adapter for rule timeline: see gradscope.pipeline.write_timeline."""
from gradscope.logs import log_to
from gradscope.pipeline import write_timeline

with log_to(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    write_timeline(snakemake.params.timeline, metrics_path=i.metrics, curvature_paths=i.curvature,
                   group_losses_path=i.group_losses, group_pairs_path=i.group_pairs, summary_path=i.summary,
                   out={"events": o.events, "links": o.links, "summary": o.summary}, run_id=snakemake.params.run_id)
