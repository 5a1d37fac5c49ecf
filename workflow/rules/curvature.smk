rule curvature:
    input:
        unpack(get_dataset_files),
        manifest="results/runs/{experiment}/{run}/train/manifest.json",
    output:
        "results/runs/{experiment}/{run}/curvature/step={step}/part-0.parquet",
    log:
        "logs/curvature/{experiment}/{run}/step={step}.log",
    benchmark:
        "benchmarks/curvature/{experiment}/{run}/step={step}.tsv"
    params:
        curvature=get_settings("curvature"),
        optim=get_settings("optim"),
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
        "../../scripts/curvature.py"
