rule influence:
    input:
        examples=get_examples_files,
        metrics="results/runs/{experiment}/{run}/train/metrics.parquet",
        train=lambda wc: get_dataset_files(wc)["train"],
        test=lambda wc: get_dataset_files(wc)["test"],
    output:
        top="results/runs/{experiment}/{run}/influence/top.parquet",
        contributions="results/runs/{experiment}/{run}/influence/contributions.parquet",
        summary="results/runs/{experiment}/{run}/influence/summary.json",
    log:
        "logs/influence/{experiment}/{run}.log",
    benchmark:
        "benchmarks/influence/{experiment}/{run}.tsv"
    params:
        influence=get_settings("influence"),
        run_id=lambda wc: get_run(wc).id,
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb("influence"),
        runtime=get_runtime("influence"),
    script:
        "../../scripts/influence.py"
