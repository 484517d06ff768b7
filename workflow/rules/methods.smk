# Feature cache, then train (one job per method x seed) + evaluate each run (the GPU rules).


rule features:
    """Frozen-backbone outputs of one split, computed once and shared by every run with that key."""
    input:
        manifest=MANIFEST,
        validation=VALIDATION,
        backbones=list(BACKBONE_DIRS.values()),
        inputs=feature_store_files,  # decoded inputs of the split (rule inputs)
    output:
        features=FEATURE_FILE,
        sidecar=FEATURE_FILE.replace(".safetensors", ".json"),
    params:
        source=lambda wildcards: FEATURE_SOURCES[wildcards.feature_key],
    log:
        log_path("features", "{feature_key}", "{split}"),
    priority: 50  # ahead of the train jobs that do not need it, so that train_causal_film starts early
    threads: GPU_JOB_THREADS
    resources:
        mem_mb=feature_build_mem_mb(CFG),  # measured peak x 2 (weldfilm/paths.py, benchmarks/feature_memory.py)
        runtime=240,
        gpu=GPU_PER_JOB,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../../scripts/features.py"


# One train job per method and seed (rule train_<method>): every protocol's run of the method and, for
# Causal-FiLM, every ablation (common.smk group_runs); one per method for the methods of
# workflow.seeds_together. Runs on one TRAIN stream train in lockstep.
for _method in TRAIN_METHODS:

    rule:
        """Train every run of one method and seed (its protocols; for causal_film also the ablations);
        runs that read the same TRAIN batches share one frozen-backbone pass per batch; each run resumes
        from its own last.pt after a kill. With workflow.evaluate_in_train_job (default) each run is then
        scored on the evaluated splits in the same job."""
        name:
            f"train_{_method}"
        input:
            unpack(group_inputs(_method)),
        output:
            group_outputs(_method),
        params:
            members=group_members(_method),
            config_hash=group_config_hash(_method),
            eval_splits=EVAL_SPLITS if EVALUATE_IN_TRAIN_JOB else [],
        log:
            train_log(_method),
        priority: len(group_runs(_method))  # the jobs that train the most runs start first (one idle core less)
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
