# Ablations: Causal-FiLM with one config change each, under the fair protocol, once per seed.
# The same rules as the main runs; only the run folder (ablations/<ablation>/seed<seed>) differs.


use rule train as train_ablation with:
    output:
        metadata=os.path.join(ABLATION_DIR, "metadata.json"),
        **(eval_outputs(ABLATION_DIR) if EVALUATE_IN_TRAIN_JOB else {}),
    log:
        log_path("train_ablation", "{ablation}", "seed{seed}"),


if not EVALUATE_IN_TRAIN_JOB:

    use rule evaluate as evaluate_ablation with:
        output:
            **eval_outputs(ABLATION_DIR),
        log:
            log_path("evaluate_ablation", "{ablation}", "seed{seed}"),
