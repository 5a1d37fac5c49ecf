"""Snakemake adapter for rule generate_data: see gradscope.pipeline.generate_data and derive_data."""
from gradscope.logs import log_to
from gradscope.pipeline import derive_data, generate_data

with log_to(snakemake.log[0]):
    out = dict(train_path=snakemake.output.train, test_path=snakemake.output.test, meta_path=snakemake.output.meta)
    if "intervene" in snakemake.params.data:  # an intervention run's dataset: its parent's, intervened on
        parent = {split: snakemake.input[f"parent_{split}"] for split in ("train", "test", "meta")}
        derive_data(snakemake.params.data, parent=parent, detections_path=snakemake.input.detections,
                    examples_paths=snakemake.input.get("examples", []), **out)
    else:
        generate_data(snakemake.params.data, **out)
