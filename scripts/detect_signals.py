"""Snakemake adapter for rule detect_signals: see gradscope.pipeline.detect_signals."""
from gradscope.logs import log_to
from gradscope.pipeline import detect_signals
from gradscope.resources import use_threads

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads, torch_threads=False)  # the config's threads.detect_signals
    detect_signals(snakemake.params.signals, examples_paths=snakemake.input.examples, meta_path=snakemake.input.meta,
                   metrics_path=snakemake.input.metrics, out=dict(snakemake.output.items()),
                   run_id=snakemake.params.run_id)
