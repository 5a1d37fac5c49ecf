rule extract_examples:
    input:
        unpack(get_dataset_files),
        manifest="results/runs/{experiment}/{run}/train/manifest.json",
    output:
        "results/runs/{experiment}/{run}/examples/step={step}/part-0.parquet",
    log:
        "logs/extract_examples/{experiment}/{run}/step={step}.log",
    benchmark:
        "benchmarks/extract_examples/{experiment}/{run}/step={step}.tsv"
    params:
        examples=get_settings("examples"),
        loss=get_settings("train", "loss"),
        device=CONFIG["device"],  # one device for every run; a plain value costs no call per job
        run_id="{experiment}/{run}",  # Snakemake fills in the wildcards
    group:
        CHECKPOINT_GROUP
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb("extract_examples"),
        runtime=get_runtime("extract_examples"),
        gpu=get_gpu("extract_examples"),
    script:
        "../../scripts/extract_examples.py"
