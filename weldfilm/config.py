"""Load, validate and resolve the workflow config.

One schema (``workflow/schemas/config.schema.yaml``) serves Snakemake and the CLI: it fills defaults
and rejects unknown keys or bad values with a message that names the key. ``profile`` selects a
named block of overrides from ``profiles`` (e.g. ``paper``; a profile may extend another, see
``apply_profile``); ``run_config`` applies a method's protocol, an ablation and a seed to give the
exact config of one training run.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from weldfilm.errors import ConfigError
from weldfilm.methods import ABLATION_METHOD, METHOD_NAMES

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = REPO_ROOT / "config.yaml"
METHODS = METHOD_NAMES  # the registry's list (weldfilm.methods.REGISTRY); the schema's enum is checked against it
PROTOCOLS = ("fair", "paper_faithful")


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """Recursively merge ``override`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(cfg: dict, dotted: str, value: Any) -> None:
    """Set ``cfg['a']['b'] = value`` for ``dotted == 'a.b'``; the path must already exist."""
    keys = dotted.split(".")
    node = cfg
    for i, key in enumerate(keys[:-1]):
        if not isinstance(node.get(key), dict):
            raise ConfigError(f"config key '{'.'.join(keys[: i + 1])}' does not exist (in override '{dotted}')")
        node = node[key]
    if keys[-1] not in node:
        raise ConfigError(f"config key '{dotted}' does not exist; see workflow/schemas/config.schema.yaml")
    node[keys[-1]] = value


def apply_dotted(cfg: dict, overrides: Mapping[str, Any]) -> dict:
    out = copy.deepcopy(cfg)
    for key, value in overrides.items():
        set_dotted(out, key, value)
    return out


def load_yaml(text: str):
    """``yaml.safe_load`` with libyaml's C parser when PyYAML has it (the schema parses ~10x faster)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def parse_set_args(items: Iterable[str]) -> dict:
    """Parse CLI ``--set a.b=value`` items; values are YAML (numbers, booleans, lists)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw)
    return out


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = load_yaml(SCHEMA_PATH.read_text())
    base = jsonschema.Draft7Validator

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    cls = jsonschema.validators.extend(base, {"properties": set_defaults})
    return cls(schema)


SCALAR_TYPES = {"boolean": bool, "integer": int, "number": (int, float), "null": type(None)}


def coerce_strings(value, schema: dict):
    """``value`` with strings parsed as YAML where the schema wants a boolean, number, null or array.

    Snakemake's ``--config key=value`` delivers nested values as text (``seeds=[0]`` -> ``['0']``,
    ``workflow={evaluate_in_train_job: false}`` -> ``'false'``); this turns them back into what the
    schema asks for, so they validate as written. Anything else is left for the validator to judge.
    """
    if isinstance(value, dict):
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {key: coerce_strings(item, properties.get(key, extra if isinstance(extra, dict) else {}))
                for key, item in value.items()}
    if isinstance(value, list):
        items = schema.get("items")
        return [coerce_strings(item, items) for item in value] if isinstance(items, dict) else value
    wanted = schema.get("type")
    wanted = [wanted] if isinstance(wanted, str) else list(wanted or [])
    if isinstance(value, str) and "string" not in wanted and (
            set(wanted) & {*SCALAR_TYPES, "array"} or any(not isinstance(e, str) for e in schema.get("enum", []))):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if not isinstance(parsed, str):
            return coerce_strings(parsed, schema)
        if "number" in wanted:  # PyYAML reads '1e-3' (no dot) as text
            try:
                return float(value)
            except ValueError:
                return value
    return value


def validate(cfg: dict) -> dict:
    """Fill schema defaults into a copy of ``cfg`` and validate it; raise ConfigError naming the key."""
    validator = _validator()
    cfg = coerce_strings(copy.deepcopy(cfg), validator.schema)
    list(validator.iter_errors(cfg))  # first pass fills defaults (nested objects appear, then theirs)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = []
        for err in errors[:10]:
            key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
            lines.append(f"  config key '{key}': {err.message}")
        raise ConfigError("invalid config:\n" + "\n".join(lines))
    return cfg


PROFILE_META_KEYS = ("extends", "restore", "select")  # keys of a profile block that are not config overrides


def get_dotted(cfg: Mapping, dotted: str, what: str = "config key"):
    """``cfg['a']['b']`` for ``dotted == 'a.b'``; ConfigError naming the key when the path does not exist."""
    node = cfg
    for i, key in enumerate(dotted.split(".")):
        if not isinstance(node, Mapping) or key not in node:
            raise ConfigError(f"{what} '{dotted}': '{'.'.join(dotted.split('.')[: i + 1])}' does not exist; "
                              "see workflow/schemas/config.schema.yaml")
        node = node[key]
    return node


def profile_chain(name: str, profiles: Mapping) -> list[tuple[str, dict]]:
    """``[(name, block), ...]`` of a profile and the ones it ``extends``, the most basic first."""
    chain, current = [], name
    while current is not None:
        if current not in profiles:
            known = ", ".join(["default", *profiles])
            where = "config key 'profile'" if current == name else f"profile '{chain[0][0]}' extends"
            raise ConfigError(f"{where}: unknown profile '{current}'; known: {known}")
        if any(current == seen for seen, _ in chain):
            cycle = " -> ".join([seen for seen, _ in chain[::-1]] + [current])
            raise ConfigError(f"config key 'profiles.{name}.extends': the profiles extend each other in a cycle ({cycle})")
        block = profiles[current] or {}
        chain.insert(0, (current, block))
        current = block.get("extends")
    return chain


def apply_profile_block(cfg: dict, base: Mapping, name: str, block: Mapping) -> dict:
    """One profile block over ``cfg``: ``restore`` its keys to ``base``, merge its overrides, then ``select``."""
    out = copy.deepcopy(cfg)
    for dotted in block.get("restore", []) or []:
        set_dotted(out, dotted, copy.deepcopy(get_dotted(base, dotted, f"config key 'profiles.{name}.restore' names")))
    out = deep_merge(out, {key: value for key, value in block.items() if key not in PROFILE_META_KEYS})
    for dotted, names in (block.get("select", {}) or {}).items():
        entries = get_dotted(out, dotted, f"config key 'profiles.{name}.select' names")
        if not isinstance(entries, Mapping):
            raise ConfigError(f"config key 'profiles.{name}.select.{dotted}': '{dotted}' is not a mapping of names")
        unknown = [entry for entry in names if entry not in entries]
        if unknown:
            raise ConfigError(f"config key 'profiles.{name}.select.{dotted}': {unknown} not in '{dotted}' "
                              f"(known: {', '.join(map(str, entries))})")
        set_dotted(out, dotted, {entry: copy.deepcopy(entries[entry]) for entry in names})
    return out


def apply_profile(cfg: dict) -> dict:
    """The config with the profile ``cfg['profile']`` applied ('default' changes nothing).

    A profile block of ``profiles`` holds nested overrides merged over the config, and three keys of
    its own, applied in this order for each profile of the chain (the one it ``extends`` first):

    * ``extends: NAME`` -- apply profile NAME (and whatever it extends) first, then this block;
    * ``restore: [dotted keys]`` -- these keys get back the value the config itself has (config.yaml
      and ``--config``, before any profile), undoing what an extended profile set, e.g. ``data``;
    * ``select: {dotted key: [names]}`` -- keep only these entries of a mapping, e.g. a subset of
      ``ablations``, whose definitions stay where they are.
    """
    name = cfg.get("profile", "default")
    profiles = cfg.get("profiles", {}) or {}
    if name == "default" and name not in profiles:
        return cfg
    out = cfg
    for block_name, block in profile_chain(name, profiles):
        out = apply_profile_block(out, cfg, block_name, block)
    return out


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> dict:
    """Read a YAML config, apply its profile and dotted overrides, fill defaults and validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    return prepare(raw, overrides)


def prepare(raw: dict, overrides: Mapping[str, Any] | None = None) -> dict:
    """Profile, overrides, defaults and validation for an already-parsed config (Snakemake's ``config``)."""
    cfg = validate(raw)
    cfg = apply_profile(cfg)
    if overrides:
        cfg = apply_dotted(cfg, overrides)
    return validate(cfg)


def run_config(cfg: dict, method: str, seed: int, protocol: str = "fair", ablation: str | None = None) -> dict:
    """The exact config of one run: protocol overrides, then the ablation's overrides, then the seed.

    The result carries ``run: {method, seed, protocol, ablation}`` so that a run directory's
    metadata says what it is.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method '{method}'; known: {', '.join(METHODS)}")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")
    out = apply_dotted(cfg, cfg["protocols"].get(protocol, {}) or {})
    if ablation:
        if ablation not in cfg["ablations"]:
            raise ConfigError(f"unknown ablation '{ablation}'; known: {', '.join(cfg['ablations'])}")
        if method != ABLATION_METHOD:
            raise ConfigError(f"ablations apply to {ABLATION_METHOD} only, not '{method}'")
        out = apply_dotted(out, cfg["ablations"][ablation] or {})
    out["run"] = {"method": method, "seed": int(seed), "protocol": protocol, "ablation": ablation}
    return validate_run(out)


def validate_run(cfg: dict) -> dict:
    run = cfg.pop("run")
    cfg = validate(cfg)
    cfg["run"] = run
    return cfg


# glibc malloc settings for the workflow's job processes (workflow.tune_malloc; ignored where the C library is
# not glibc). With the defaults a process returns freed buffers of a few MB to the system and faults fresh
# pages in for the next batch; on a Causal-FiLM CPU train job that was 12 s of 79 s in the kernel (7 M page
# faults). Buffers up to 32 MiB now come from the heap and up to 1 GiB of freed heap stays with the process
# (python benchmarks/workflow.py --set "workflow={tune_malloc: false}" for the side by side).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
              "MALLOC_TOP_PAD_": str(64 << 20)}


def job_environment(cfg: dict) -> dict[str, str]:
    """Environment variables the workflow sets for its jobs (the Snakefile, before any job starts); a
    variable already in the environment keeps its value."""
    return dict(MALLOC_ENV) if cfg["workflow"]["tune_malloc"] else {}


def method_audio_settings(cfg: dict) -> dict[str, dict]:
    """Audio read settings of the configured methods that decode audio their own way (Late Fusion's STFT).

    ``preprocess`` (Causal-FiLM's mel) is always checked; these are checked too, so that a recording too
    short for Late Fusion's n_fft 16384 at 192 kHz stops the workflow at ``validate``, not in a training job.
    """
    out = {}
    if "late_fusion" in cfg.get("methods", ()):
        s = cfg["late_fusion"]
        out["late_fusion"] = {"audio_type": "stft", "audio_sr": s["audio_sr"], "n_fft": s["n_fft"],
                              "hop_length": s["hop_length"], "audio_frames": s["audio_frames"]}
    return out
