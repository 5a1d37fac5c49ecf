rule extract_examples:
    input:
        unpack(get_dataset_files),
        unpack(get_checkpoint_inputs),
        code=get_code_inputs,  # a python model factory's source: the model is rebuilt here
    output:
        directory(layout.RUN["examples_dir"]) if PER_RUN else layout.RUN["examples"],
    log:
        layout.log("extract_examples", JOB_PER),
    benchmark:
        layout.benchmark("extract_examples", JOB_PER)
    params:
        examples=get_settings("examples"),
        loss=get_settings("train", "loss"),
        steps=get_job_steps,
        checkpoints=get_checkpoint_files,  # {step: file} of a run gradscope did not train
        model=get_settings("model"),  # rebuilds the model of a plain state_dict
        device=get_settings("device"),  # the run's, as train gets it (a plain value where all runs share it)
        run_id="{experiment}/{run}",  # Snakemake fills in the wildcards
    group:
        CHECKPOINT_GROUP
    wildcard_constraints:
        experiment=PER_RUN_EXPERIMENT,
    conda:
        "../../envs/gradscope.yaml"
    threads: get_threads("extract_examples")
    resources:
        mem_mb=get_mem_mb("extract_examples"),
        runtime=get_runtime("extract_examples"),
        gpu=get_gpu("extract_examples"),
    script:
        "../../scripts/extract_examples.py"


if PER_RUN:  # runs gradscope did not train: one job per checkpoint all the same (see PER_RUN_EXPERIMENT)
    use rule extract_examples as extract_examples_per_checkpoint with:
        output:
            layout.RUN["examples"],
        log:
            layout.log("extract_examples", "step"),
        benchmark:
            layout.benchmark("extract_examples", "step")
        wildcard_constraints:
            experiment=EXTERNAL_EXPERIMENT,
