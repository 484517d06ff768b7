# Decoded-input store: each split's decoded, resized inputs of each kind (one modality at one method's
# preprocessing sizes), written once by a CPU job and read memory-mapped by the feature-cache builds and
# the train/evaluate jobs (weldfilm/data/store.py), so that no GPU job decodes FLAC, AVI or photos.
# The kinds: INPUT_KINDS (workflow/rules/common.smk, from every run's config).


rule inputs:
    """Decode every run of one split for one input kind and write it to the store (.npy + sidecar)."""
    input:
        manifest=MANIFEST,
        validation=VALIDATION,
    output:
        data=INPUT_FILE,
        sidecar=INPUT_FILE.replace(".npy", ".json"),
    wildcard_constraints:
        kind=_alternatives(INPUT_KINDS),
    params:
        spec=lambda wildcards: INPUT_KINDS[wildcards.kind],
    log:
        log_path("inputs", "{kind}", "{split}"),
    priority: 50  # short jobs that the feature builds and every train job wait for
    threads: 1  # decoding workers = threads (in-process at 1); the kinds and splits run side by side
    resources:
        mem_mb=lambda wildcards, threads: input_store.build_mem_mb(INPUT_KINDS[wildcards.kind], threads),
        runtime=60,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../../scripts/inputs.py"
