# Feature cache, then train + evaluate each method x seed x protocol (the GPU rules).


rule features:
    """Frozen-backbone outputs of one split, computed once and shared by every run with that key."""
    input:
        manifest=MANIFEST,
        validation=VALIDATION,
        backbones=list(BACKBONE_DIRS.values()),
    output:
        features=FEATURE_FILE,
        sidecar=FEATURE_FILE.replace(".safetensors", ".json"),
    params:
        source=lambda wildcards: FEATURE_SOURCES[wildcards.feature_key],
    log:
        log_path("features", "{feature_key}", "{split}"),
    threads: GPU_JOB_THREADS
    resources:
        mem_mb=feature_build_mem_mb(CFG),  # measured peak x 2 (weldfilm/feature_keys.py, benchmarks/feature_memory.py)
        runtime=240,
        gpu=GPU_PER_JOB,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../../scripts/features.py"


rule train:
    """Train one method with one seed under one protocol; resumes from last.pt after a kill. With
    workflow.evaluate_in_train_job (default) the same job then scores the evaluated splits."""
    input:
        unpack(train_inputs),
    output:
        metadata=os.path.join(RUN_DIR, "metadata.json"),
        **(eval_outputs(RUN_DIR) if EVALUATE_IN_TRAIN_JOB else {}),
    params:
        settings=run_settings,
        run_dir=run_dir,
        config_hash=run_config_hash,
        eval_splits=EVAL_SPLITS if EVALUATE_IN_TRAIN_JOB else [],
    log:
        log_path("train", "{protocol}", "{method}", "seed{seed}"),
    threads: GPU_JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=720,
        gpu=GPU_PER_JOB,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../../scripts/train.py"


if not EVALUATE_IN_TRAIN_JOB:  # scoring as jobs of their own

    rule evaluate:
        """Score a trained run on every evaluated split: scores.csv + metrics.json each."""
        input:
            unpack(evaluate_inputs),
        output:
            **eval_outputs(RUN_DIR),
        params:
            run_dir=run_dir,
            splits=EVAL_SPLITS,
            config_hash=run_config_hash,
        log:
            log_path("evaluate", "{protocol}", "{method}", "seed{seed}"),
        threads: GPU_JOB_THREADS
        resources:
            mem_mb=8000,
            runtime=60,
            gpu=GPU_PER_JOB,
        conda:
            "../../envs/gpu.yaml"
        script:
            "../../scripts/evaluate.py"
