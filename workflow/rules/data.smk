rule generate_data:
    input:
        get_data_inputs,
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
        mem_mb=get_mem_mb("generate_data"),
        runtime=get_runtime("generate_data"),
    script:
        "../../scripts/generate_data.py"
