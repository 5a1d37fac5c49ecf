rule resolve_config:
    output:
        "results/runs/{experiment}/{run}/config.yaml",
    log:
        "logs/resolve_config/{experiment}/{run}.log",
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
        metrics="results/runs/{experiment}/{run}/train/metrics.parquet",
        manifest="results/runs/{experiment}/{run}/train/manifest.json",
        dynamics="results/runs/{experiment}/{run}/train/dynamics.parquet",
        checkpoints=directory("results/runs/{experiment}/{run}/train/checkpoints"),
    log:
        "logs/train/{experiment}/{run}.log",
    benchmark:
        "benchmarks/train/{experiment}/{run}.tsv"
    params:
        settings=lambda wc: train_slice(get_run(wc).settings),
        run_id=lambda wc: get_run(wc).id,
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb("train"),
        runtime=get_runtime("train"),
        gpu=get_gpu("train"),
    script:
        "../../scripts/train.py"
