# Data: (synthetic dataset) -> manifest -> validation -> dataset card.


if CFG["data"]["source"] == "synthetic":

    rule synthesize:
        """Write the synthetic dataset (the real on-disk layout) to data.root."""
        output:
            directory(DATA_ROOT),
        params:
            config_hash=section_hash("synthetic"),
        log:
            log_path("synthesize"),
        threads: 2
        resources:
            mem_mb=4000,
            runtime=60,
        conda:
            "../../envs/cpu.yaml"
        script:
            "../../scripts/synthesize.py"


rule manifest:
    """One row per run with its split (the paper's manifest when given, else a seeded split)."""
    input:
        data=DATA_ROOT,
        paper_manifest=[PAPER_MANIFEST] if PAPER_MANIFEST else [],
    output:
        MANIFEST,
    params:
        config_hash=section_hash("data"),
    log:
        log_path("manifest"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../../scripts/manifest.py"


rule validate:
    """Open every file of every run; stop the workflow here with the list of bad runs."""
    input:
        data=DATA_ROOT,
        manifest=MANIFEST,
    output:
        report(VALIDATION, caption="../report/validation.rst", category="Data"),
    params:
        config_hash=section_hash("data", "preprocess"),
        method_audio=stable_hash(method_audio_settings(CFG)),  # Late Fusion's STFT settings are read too
    log:
        log_path("validate"),
    priority: 60  # every feature and train job waits for it (rule inputs decodes beside it)
    threads: 1  # worker processes checking runs (in-process at 1)
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../../scripts/validate.py"


rule dataset_card:
    """Counts per class and split, how far one hand feature separates each class, and a figure of one run's modalities."""
    input:
        data=DATA_ROOT,
        manifest=MANIFEST,
        validation=VALIDATION,
    output:
        counts_csv=report(f"{CARD_DIR}/counts.csv", caption="../report/dataset_card.rst", category="Data"),
        counts_md=f"{CARD_DIR}/counts.md",
        separability_csv=report(f"{CARD_DIR}/separability.csv", caption="../report/separability.rst", category="Data"),
        separability_md=f"{CARD_DIR}/separability.md",
        modalities=report(f"{CARD_DIR}/modalities.png", caption="../report/modalities.rst", category="Data"),
    params:
        config_hash=section_hash("data", "preprocess"),
    log:
        log_path("dataset_card"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../../scripts/dataset_card.py"
