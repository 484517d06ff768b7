"""Rule features: cache the frozen-backbone outputs of one split."""

from snakemake_job import run_job


def job(cfg, snakemake):
    from weldfilm.config import run_config
    from weldfilm.features import build_feature_cache

    # the config of the method/protocol/ablation this cache key comes from (the seed does not enter the key)
    source = snakemake.params.source
    source_cfg = run_config(cfg, source["method"], 0, source["protocol"], source["ablation"])
    build_feature_cache(source_cfg, snakemake.wildcards.split, snakemake.output.features)


if __name__ == "__main__":  # not in worker processes that re-import this file (multiprocessing spawn)
    run_job(snakemake, job)  # noqa: F821 (injected by Snakemake)
