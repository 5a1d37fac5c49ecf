"""Snakemake adapter for rule import_run: see gradscope.external.import_run."""
from pathlib import Path

from gradscope.artifacts import record_invocation
from gradscope.external import import_run
from gradscope.logs import log_to
from gradscope.resources import use_threads

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)  # the config's threads.import_run
    record_invocation(Path(snakemake.output.manifest).parent.parent)  # what later fix commands carry
    import_run(snakemake.params.settings, snakemake.params.source, snakemake.params.checkpoints,
               dataset={k: snakemake.input[k] for k in ("train", "test", "meta")},
               out={k: snakemake.output[k] for k in ("metrics", "dynamics", "manifest")},
               run_id=snakemake.params.run_id, device=snakemake.params.settings["device"])
