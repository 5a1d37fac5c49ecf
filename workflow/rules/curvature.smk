rule curvature:
    input:
        unpack(get_curvature_inputs),
        manifest="results/runs/{experiment}/{run}/train/manifest.json",
    output:
        table="results/runs/{experiment}/{run}/curvature/step={step}/part-0.parquet",
        eigenvectors="results/runs/{experiment}/{run}/curvature/step={step}/eigenvectors.npy",
    log:
        "logs/curvature/{experiment}/{run}/step={step}.log",
    benchmark:
        "benchmarks/curvature/{experiment}/{run}/step={step}.tsv"
    params:
        curvature=get_settings("curvature"),
        optim=get_settings("optim"),
        loss=get_settings("train", "loss"),
        device=CONFIG["device"],  # one device for every run; a plain value costs no call per job
        run_id="{experiment}/{run}",  # Snakemake fills in the wildcards
    group:
        CHECKPOINT_GROUP
    conda:
        "../../envs/gradscope.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb("curvature"),
        runtime=get_runtime("curvature"),
        gpu=get_gpu("curvature"),
    script:
        "../../scripts/curvature.py"
