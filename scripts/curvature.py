"""Snakemake adapter for rule curvature: see gradscope.pipeline.compute_curvature."""
from pathlib import Path

from gradscope.logs import log_to
from gradscope.pipeline import compute_curvature

with log_to(snakemake.log[0]):
    compute_curvature(snakemake.params.curvature, optim=snakemake.params.optim, loss=snakemake.params.loss,
                      device=snakemake.params.device, data_dir=Path(snakemake.input.meta).parent,
                      manifest=snakemake.input.manifest, step=int(snakemake.wildcards.step),
                      out=snakemake.output.table, eigenvectors_out=snakemake.output.eigenvectors,
                      run_id=snakemake.params.run_id, warm=snakemake.input.get("warm"))
