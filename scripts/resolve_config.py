"""Snakemake adapter for rule resolve_config: the run's resolved config, as YAML, holding the
settings that apply to the run and its dataset id (gradscope.config.run_config); the rule's
params, and so what reruns, are the full settings."""
from gradscope.artifacts import write_yaml
from gradscope.config import run_config
from gradscope.logs import log_to

with log_to(snakemake.log[0]):
    write_yaml(run_config(dict(snakemake.params.settings)), snakemake.output[0])
