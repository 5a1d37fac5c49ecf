"""Package data: the config schema (config.schema.yaml), the one source of every default."""
