# Decoded-input store: each split's decoded, resized inputs of each kind (one modality at one method's
# preprocessing sizes), written once by a CPU job and read memory-mapped by the feature-cache builds and
# the train/evaluate jobs (weldfilm/data/store.py), so that no GPU job decodes FLAC, AVI or photos.


def _input_kinds():
    """kind name -> spec: every kind some run, or the feature-cache build of its config, reads. The spec
    (sizes + data settings) is all a build needs, so the job depends on nothing else of the config."""
    kinds = {}
    for settings in all_run_settings():
        cfg = cached_run_config(**settings)
        for by_split in (input_store.run_input_kinds(cfg), input_store.feature_input_kinds(cfg, splits=SPLITS)):
            for spec in (spec for specs in by_split.values() for spec in specs):
                kinds.setdefault(input_store.kind_name(spec), spec)
    return kinds


INPUT_KINDS = _input_kinds()
INPUT_FILE = str(input_store.store_file(RESULTS, "{kind}", "{split}"))


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
    threads: 1  # decoding workers = threads (in-process at 1); the kinds and splits run side by side
    resources:
        mem_mb=lambda wildcards, threads: input_store.build_mem_mb(INPUT_KINDS[wildcards.kind], threads),
        runtime=60,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../../scripts/inputs.py"
