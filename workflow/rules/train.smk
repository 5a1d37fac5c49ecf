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
        mem_mb=500,
        runtime=5,
    script:
        "../../scripts/resolve_config.py"


rule train:
    input:
        unpack(get_dataset_files),
    output:
        metrics=layout.RUN["metrics"],
        manifest=layout.RUN["manifest"],
        dynamics=layout.RUN["dynamics"],
        checkpoints=directory(layout.RUN["checkpoints"]),
    log:
        layout.log("train"),
    benchmark:
        layout.benchmark("train")
    params:
        settings=lambda wc: train_slice(get_run(wc).settings),
        run_id="{experiment}/{run}",  # Snakemake fills in the wildcards
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb("train"),
        runtime=get_runtime("train"),
        gpu=get_gpu("train"),
    script:
        "../../scripts/train.py"
