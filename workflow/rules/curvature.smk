rule curvature:
    input:
        unpack(get_curvature_inputs),
        unpack(get_checkpoint_inputs),
        code=get_code_inputs,  # a python model factory's source: the model is rebuilt here
    output:
        **({"tables": directory(layout.RUN["curvature_dir"])} if PER_RUN else
           {"table": layout.RUN["curvature"], "eigenvectors": layout.RUN["eigenvectors"]}),
    log:
        layout.log("curvature", JOB_PER),
    benchmark:
        layout.benchmark("curvature", JOB_PER)
    params:
        curvature=get_settings("curvature"),
        optim=get_settings("optim"),
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
    threads: get_threads("curvature")
    resources:
        mem_mb=get_mem_mb("curvature"),
        runtime=get_runtime("curvature"),
        gpu=get_gpu("curvature"),
    script:
        "../../scripts/curvature.py"


if PER_RUN:  # runs gradscope did not train: one job per checkpoint all the same (see PER_RUN_EXPERIMENT)
    use rule curvature as curvature_per_checkpoint with:
        output:
            table=layout.RUN["curvature"],
            eigenvectors=layout.RUN["eigenvectors"],
        log:
            layout.log("curvature", "step"),
        benchmark:
            layout.benchmark("curvature", "step")
        wildcard_constraints:
            experiment=EXTERNAL_EXPERIMENT,
