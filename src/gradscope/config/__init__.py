"""Configuration: validation against the JSON Schema, defaults, and expansion into runs.

A config holds experiments; an experiment is base settings + a grid + seeds, and expands to
runs. Run ids are readable: the experiment, then the grid values and the seed,
e.g. `grokking/wd~1.0_seed~0`. A dataset id is the generator and a hash of the generator's
block alone, so runs that differ only in model or optimizer share one dataset.

One module per concern, each importing only those above it in this list; every name is
importable from `gradscope.config` itself:

- `gradscope.config.validation`: the schema (`SCHEMA_PATH`, `load_schema`), `validate` with
  defaults filled in, one section's settings (`section`, `filled`) and `applicable`;
- `gradscope.config.files`: reading config files (`read_config_file`) and how several combine
  (`compose`, `load_config_files`);
- `gradscope.config.schedule`: checkpoint schedules (`checkpoint_steps`, `checkpoint_count`);
- `gradscope.config.checks`: the checks across keys (`CROSS_CHECKS`) and of named factories;
- `gradscope.config.slices`: a run's settings sliced per stage (`data_slice`, `dataset_id`,
  `train_slice`, `run_config`);
- `gradscope.config.runs`: loading a config (`load_config`, `load_runs`) and expanding it into
  runs (`expand_runs`, `Run`).
"""

# The underscore names too, as the single module config.py gave them (gradscope.preflight reads `_schema`).
from gradscope.config.validation import (  # noqa: F401
    _DEFAULT_KEYS, _SCHEMAS, SCHEMA_PATH, SECTIONS, ConfigError, _applicable, _check, _describe, _dropped,
    _filling_validator_class, _holds_all, _resolved, _schema, _validator, applicable, filled, load_schema, section,
    section_defaults, validate)
from gradscope.config.files import (  # noqa: F401
    DEFAULT_CONFIG, _mapping_without_duplicates, _merge, _UniqueKeyLoader, check_config_file, compose,
    load_config_files, read_config_file)
from gradscope.config.schedule import (  # noqa: F401
    MAX_CHECKPOINTS, _dense, _dense_overlap, _main_rule, _main_steps, checkpoint_count, checkpoint_steps)
from gradscope.config.checks import (  # noqa: F401
    CROSS_CHECKS, _check_checkpoints, _check_curvature, _check_data, _check_detectors, _check_factories,
    _check_opposing_groups, _check_optim, _is_prime, train_size)
from gradscope.config.slices import data_slice, dataset_id, intervention_slice, run_config, train_slice
from gradscope.config.runs import (  # noqa: F401
    ABBREVIATIONS, INTERVENTION_KEYS, Run, _coerce_scalars, _external_runs, _format_value, _intervention_runs,
    _repeated_grid_values, _set_dotted, _short_names, _sorted, _spans_text, expand_runs, load_config, load_runs,
    require_device, run_steps)

__all__ = [
    "ABBREVIATIONS", "CROSS_CHECKS", "DEFAULT_CONFIG", "INTERVENTION_KEYS", "MAX_CHECKPOINTS", "SCHEMA_PATH", "SECTIONS",
    "ConfigError", "Run", "applicable", "check_config_file", "checkpoint_count", "checkpoint_steps", "compose",
    "data_slice", "dataset_id", "expand_runs", "filled", "intervention_slice", "load_config", "load_config_files",
    "load_runs", "load_schema", "read_config_file", "require_device", "run_config", "run_steps", "section",
    "section_defaults", "train_size", "train_slice", "validate",
]
