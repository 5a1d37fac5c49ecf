rule resolve_config:
    output:
        layout.RUN["config"],
    log:
        layout.log("resolve_config"),
    params:
        settings=lambda wc: get_run(wc).settings,
    localrule: True
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(500),
        runtime=per_attempt(5),
    script:
        "../../scripts/resolve_config.py"


rule train:
    input:
        unpack(get_dataset_files),
        code=get_code_inputs,  # a python model factory's source: an edit trains again
    output:
        metrics=layout.RUN["metrics"],
        manifest=layout.RUN["manifest"],
        dynamics=layout.RUN["dynamics"],
        checkpoints=directory(layout.RUN["checkpoints"]),
    wildcard_constraints:
        experiment=TRAINED_EXPERIMENT,
    log:
        layout.log("train"),
    benchmark:
        layout.benchmark("train")
    params:
        settings=lambda wc: train_slice(get_run(wc).settings),
        run_id="{experiment}/{run}",  # Snakemake fills in the wildcards
    conda:
        "../../envs/gradscope.yaml"
    threads: get_threads("train")  # gradscope train: resources.TRAIN_THREADS, the default (the same numbers)
    resources:
        mem_mb=get_mem_mb("train"),
        runtime=get_runtime("train"),
        gpu=get_gpu("train"),
    script:
        "../../scripts/train.py"


# A run gradscope did not train (an experiment's `source`): the train stage's outputs but the
# checkpoints, which stay where they are (gradscope.external.import_run).
rule import_run:
    input:
        unpack(get_dataset_files),
        unpack(get_source_inputs),
        code=get_code_inputs,
    output:
        metrics=layout.RUN["metrics"],
        manifest=layout.RUN["manifest"],
        dynamics=layout.RUN["dynamics"],
    wildcard_constraints:
        experiment=EXTERNAL_EXPERIMENT,
    log:
        layout.log("import_run"),
    benchmark:
        layout.benchmark("import_run")
    params:
        settings=lambda wc: train_slice(get_run(wc).settings),
        source=lambda wc: get_run(wc).settings["source"],
        checkpoints=lambda wc: {str(s): f for s, f in get_run(wc).checkpoints.items()},
        run_id="{experiment}/{run}",  # Snakemake fills in the wildcards
    conda:
        "../../envs/gradscope.yaml"
    threads: get_threads("import_run")
    resources:
        mem_mb=get_mem_mb("import_run"),
        runtime=get_runtime("import_run"),
        gpu=get_gpu("import_run"),
    script:
        "../../scripts/import_run.py"
