# Frozen backbones: tiny random-init models (default) or the user's pretrained checkpoints.

if CFG["backbones"]["source"] == "tiny":
    _misplaced = {
        key: path
        for key, path in BACKBONE_DIRS.items()
        if Path(path) != Path(CFG["backbones"]["dir"]) / TINY_BACKBONE_NAMES[key]
    }
    if _misplaced:
        raise WorkflowError(
            "config: with backbones.source 'tiny' every backbone path must be "
            f"backbones.dir/<name> ({CFG['backbones']['dir']}/...); these are not: "
            + ", ".join(f"backbones.{key}={path}" for key, path in _misplaced.items())
            + ". Set them to the folder names "
            + ", ".join(f"{key}: <dir>/{name}" for key, name in TINY_BACKBONE_NAMES.items())
        )

    rule tiny_backbones:
        """Tiny random-init backbones of the paper's model classes (same API, seconds to run)."""
        output:
            **{key: directory(path) for key, path in BACKBONE_DIRS.items()},
        params:
            config_hash=section_hash("backbones", "preprocess"),
        log:
            log_path("tiny_backbones"),
        threads: 1
        resources:
            mem_mb=2000,
            runtime=15,
        conda:
            "../../envs/cpu.yaml"
        script:
            "../../scripts/tiny_backbones.py"

else:
    _absent = {key: path for key, path in BACKBONE_DIRS.items() if not Path(path).is_dir()}
    if _absent:
        raise WorkflowError(
            "config: backbones.source is 'pretrained' but these checkpoint folders do not exist: "
            + ", ".join(f"backbones.{key}={path}" for key, path in _absent.items())
            + ". Download the checkpoints named in config.yaml (profiles.paper.backbones) and set "
            "the paths, or use backbones.source: tiny."
        )
