# Paper: tables and figures from every run's results files, then the rendered paper.
# Output names come from weldfilm/paper/__init__.py (TABLES, FIGURES, PAPER_OUTPUTS).


rule tables:
    """The paper's tables (CSV, Markdown, LaTeX, provenance) from every run's metrics and metadata, and the TEST
    scores the paired Δ of the main and ablation tables resample."""
    input:
        metrics=all_eval_metrics(),
        metadata=all_run_metadata(),
        scores=[path.replace("metrics.json", "scores.csv") for path in all_eval_metrics() if "/eval/test/" in path],
        card=f"{CARD_DIR}/counts.csv",
    output:
        reported(TABLE_FILES, ".csv", "../report/table_{name}.rst", "Tables"),
    params:
        config_hash=section_hash(*CFG),
    log:
        log_path("tables"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../../scripts/tables.py"


rule figures:
    """The paper's figures (PNG + PDF) from every run's scores, metrics and training logs."""
    input:
        metrics=all_eval_metrics(),
        card=f"{CARD_DIR}/counts.csv",
    output:
        reported(FIGURE_FILES, ".png", "../report/figure_{name}.rst", "Figures"),
    params:
        config_hash=section_hash(*CFG),
    log:
        log_path("figures"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../../scripts/figures.py"


rule paper:
    """Render the paper (Markdown + HTML; PDF too when a LaTeX engine is on PATH) around the tables and figures."""
    input:
        tables=TABLE_FILES,
        figures=FIGURE_FILES,
        source=os.path.join(PAPER_SRC, "paper.md"),
    output:
        reported(PAPER_FILES, ".html", "../report/paper.rst", "Paper"),
    params:
        config_hash=section_hash(*CFG),
    log:
        log_path("paper"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../../scripts/paper.py"
