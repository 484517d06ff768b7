# Ablations: Causal-FiLM with one config change each, under the fair protocol, once per seed.
# The same rules as the main runs; only the run folder (ablations/<ablation>/seed<seed>) differs.


use rule train as train_ablation with:
    output:
        metadata=os.path.join(ABLATION_DIR, "metadata.json"),
    log:
        log_path("train_ablation", "{ablation}", "seed{seed}"),


use rule evaluate as evaluate_ablation with:
    output:
        **eval_outputs(ABLATION_DIR),
    log:
        log_path("evaluate_ablation", "{ablation}", "seed{seed}"),
