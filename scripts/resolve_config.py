"""Snakemake adapter for rule resolve_config: the run's resolved config, as YAML, holding the
settings that apply to the run (gradscope.config.applicable); the rule's params, and so what
reruns, are the full settings."""
from gradscope.artifacts import write_yaml
from gradscope.config import applicable
from gradscope.logs import log_to

with log_to(snakemake.log[0]):
    write_yaml(applicable(dict(snakemake.params.settings)), snakemake.output[0])
