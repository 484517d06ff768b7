# Decoded-input store: each split's decoded, resized inputs of each kind (one modality at one method's
# preprocessing sizes), written by one CPU job per kind (every split) and read memory-mapped by the feature-cache builds and
# the train/evaluate jobs (weldfilm/data/store.py), so that no GPU job decodes FLAC, AVI or photos.
# The kinds: INPUT_KINDS (workflow/rules/common.smk, from every run's config).


rule inputs:
    """Decode every run of every split for one input kind and write it to the store (.npy + sidecar per split)."""
    input:
        manifest=MANIFEST,  # not validation.json: decoding runs beside rule validate (a bad file stops both)
    output:
        **{split: INPUT_FILE.replace("{split}", split) for split in SPLITS},
        **{f"{split}_sidecar": INPUT_FILE.replace("{split}", split).replace(".npy", ".json") for split in SPLITS},
    wildcard_constraints:
        kind=_alternatives(INPUT_KINDS),
    params:
        spec=lambda wildcards: INPUT_KINDS[wildcards.kind],
        splits=SPLITS,
    log:
        log_path("inputs", "{kind}"),
    priority: 50  # short jobs that the feature builds and every train job wait for
    threads: 1  # decoding workers = threads (in-process at 1); the kinds run side by side
    resources:
        mem_mb=lambda wildcards, threads: input_store.build_mem_mb(INPUT_KINDS[wildcards.kind], threads),
        runtime=60,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../../scripts/inputs.py"
