"""Snakemake adapter for rule curvature: see gradscope.pipeline.write_curvature.

One job covers one checkpoint (its outputs are that checkpoint's table and eigenvectors) or every
checkpoint of a run in order (its output is the run's curvature/ folder; checkpoint_jobs:
per_run), where a warm start reads the eigenvectors the job wrote for the checkpoint before."""

from gradscope import layout
from gradscope.logs import log_to
from gradscope.pipeline import write_curvature
from gradscope.resources import use_threads

one = "step" in snakemake.wildcards.keys()
warm = snakemake.input.get("warm")
with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)  # the config's threads.curvature
    for step in snakemake.params.steps:
        files = ({"curvature": snakemake.output.table, "eigenvectors": snakemake.output.eigenvectors} if one else
                 {name: layout.partition_file(snakemake.output.tables, name, step) for name in ("curvature", "eigenvectors")})
        write_curvature(snakemake.params.curvature, optim=snakemake.params.optim, loss=snakemake.params.loss,
                        device=snakemake.params.device, dataset=dict(snakemake.input.items()),
                        manifest=snakemake.input.get("manifest"), checkpoints=snakemake.params.checkpoints,
                        model=snakemake.params.model, step=step, out=files["curvature"],
                        eigenvectors_out=files["eigenvectors"], run_id=snakemake.params.run_id,
                        warm=warm if snakemake.params.curvature["warm_start"] else None)
        warm = files["eigenvectors"]
