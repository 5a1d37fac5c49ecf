rule generate_data:
    output:
        train="results/data/{dataset}/train.parquet",
        test="results/data/{dataset}/test.parquet",
        meta="results/data/{dataset}/meta.json",
    log:
        "logs/generate_data/{dataset}.log",
    params:
        data=lambda wc: DATASETS[wc.dataset],
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../../scripts/generate_data.py"
