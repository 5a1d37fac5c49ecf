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
        loss=lambda wc: get_run(wc).settings["train"]["loss"],
        device=lambda wc: get_run(wc).settings["device"],
        run_id=lambda wc: get_run(wc).id,
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../../scripts/extract_examples.py"
