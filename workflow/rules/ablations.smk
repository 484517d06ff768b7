# Ablations: Causal-FiLM with one config change each, under the fair protocol, once per seed.
# They are trained by the train_causal_film job of their seed (methods.smk, common.smk group_runs);
# scored as jobs of their own only without workflow.evaluate_in_train_job. Only the run folder
# (ablations/<ablation>/seed<seed>) differs from a main run.


if not EVALUATE_IN_TRAIN_JOB:

    use rule evaluate as evaluate_ablation with:
        output:
            **eval_outputs(ABLATION_DIR),
        log:
            log_path("evaluate_ablation", "{ablation}", "seed{seed}"),
