"""Fidelity to the authors' code: `paper_faithful` reproduces every recorded setting, `fair` corrects the
flaws, the paper profile has the authors' sizes, the decoder keys reach the module, config.yaml agrees with
the schema defaults, and the deviations table is built from the runs' metadata."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from paper_fakes import tiny_config, write_results
from weldfilm.config import DEFAULT_CONFIG, METHODS, SCHEMA_PATH, load_config, load_yaml, prepare, run_config, validate
from weldfilm.methods import get_method
from weldfilm.paper import TABLE_NAMES
from weldfilm.paper.deviations import (ADAPTED, AUTHORS, EFFECTIVE, FLAW, INTENDED, KINDS, METHOD, NOT_RECORDED,
                                       SCALE, deviation_rows, recorded_value, same_value)
from weldfilm.paper.tables import build_tables

DIMS = {"video": 12, "audio": 10, "image": 8, "image_prefix_tokens": 1}


def config_yaml() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def predicted_metadata(cfg: dict, method: str, protocol: str, tmp_path: Path, ablation: str | None = None) -> dict:
    """The metadata fields the registry reads, as a run of this config would record them (``runner.fit_run``:
    ``config`` = the run config, ``selection_split`` and ``describe.augmentation`` from the Method object)."""
    run_cfg = run_config(cfg, method, 0, protocol, ablation)
    obj = get_method(method)(run_cfg, tmp_path / f"{method}_{protocol}", torch.device("cpu"))
    return {"run": run_cfg["run"], "config": run_cfg, "selection_split": obj.selection_split,
            "describe": {"augmentation": obj.uses_augmentation()}}


def predicted(setting, metadata: dict):
    value = recorded_value(metadata, setting.path)
    assert not (isinstance(value, str) and value == NOT_RECORDED), (
        f"{setting.path}: not predictable from the run config; extend predicted_metadata() in this test")
    return value


# ------------------------------------------------------------------------------ protocols
def test_paper_faithful_switches_each_recorded_setting(tmp_path):
    cfg = load_config()
    faithful = {m: predicted_metadata(cfg, m, "paper_faithful", tmp_path) for m in METHODS}
    fair = {m: predicted_metadata(cfg, m, "fair", tmp_path) for m in METHODS}
    cf_faithful, cf_fair = faithful["causal_film"]["config"], fair["causal_film"]["config"]
    assert cf_faithful["train"]["use_augmentations"] is True and cf_fair["train"]["use_augmentations"] is False
    assert faithful["causal_film"]["describe"]["augmentation"] is True
    assert not any(fair[m]["describe"]["augmentation"] for m in METHODS)
    assert not any(faithful[m]["describe"]["augmentation"] for m in METHODS if m != "causal_film")
    assert cf_faithful["causal_film"]["view_padding"] == "include" and cf_fair["causal_film"]["view_padding"] == "exclude"
    assert cf_faithful["train"]["warmup_epochs"] == 0 and cf_fair["train"]["warmup_epochs"] == 2
    assert cf_faithful["train"]["use_ema"] is False
    assert {m: faithful[m]["selection_split"] for m in METHODS} == {
        "causal_film": "val", "late_fusion": "test", "m3dm": None, "dinomaly": "test"}
    assert {fair[m]["selection_split"] for m in METHODS if m != "m3dm"} == {"val"}
    for m in METHODS:
        assert faithful[m]["config"]["evaluation"]["threshold_split"] == "same"
        assert fair[m]["config"]["evaluation"]["threshold_split"] == "val"
    assert faithful["m3dm"]["config"]["m3dm"]["fusion_fit_scores"] == "in_sample"
    assert fair["m3dm"]["config"]["m3dm"]["fusion_fit_scores"] == "leave_one_run_out"
    # the schema defaults (no config file) give the same two protocols
    bare = prepare({})
    assert bare["protocols"] == cfg["protocols"]
    bare_cf = run_config(bare, "causal_film", 0, "paper_faithful")
    assert bare_cf["train"]["use_augmentations"] and bare_cf["causal_film"]["view_padding"] == "include"
    assert run_config(bare, "causal_film", 0, "fair")["train"]["use_ema"] is True  # fair: EMA as configured


@pytest.mark.parametrize("source", ["config.yaml", "schema defaults", "paper profile"])
def test_paper_faithful_is_the_authors_code_in_every_recorded_respect(source, tmp_path):
    """Every registry row that is not a size: the paper_faithful run has the authors' value; every flaw and
    ignored config key: the fair run differs from it (the schema defaults: what `fair` means)."""
    raw = {"config.yaml": config_yaml(), "schema defaults": {}, "paper profile": {**config_yaml(), "profile": "paper"}}
    cfg = prepare(raw[source])
    faithful = {m: predicted_metadata(cfg, m, "paper_faithful", tmp_path) for m in METHODS}
    for setting in AUTHORS:
        if setting.kind == ADAPTED or (setting.kind == SCALE and source != "paper profile"):
            continue
        for method in setting.methods:
            value = predicted(setting, faithful[method])
            assert same_value(value, setting.authors), (
                f"{source}: paper_faithful {method} {setting.path} = {value!r}, the authors' code {setting.authors!r}")
    if source == "schema defaults":
        fair = {m: predicted_metadata(cfg, m, "fair", tmp_path) for m in METHODS}
        for setting in AUTHORS:
            if setting.kind in (FLAW, INTENDED):
                for method in setting.methods:
                    assert not same_value(predicted(setting, fair[method]), setting.authors), (
                        f"fair {method} {setting.path} keeps the authors' {setting.kind} {setting.authors!r}")


def test_registry_rows_name_real_settings():
    defaults = validate({})
    assert AUTHORS and set(KINDS) == {FLAW, INTENDED, EFFECTIVE, METHOD, SCALE, ADAPTED}
    seen = set()
    for setting in AUTHORS:
        assert setting.kind in KINDS and set(setting.methods) <= set(METHODS) and setting.spec
        if setting.path.startswith("config."):
            assert recorded_value(defaults, setting.setting) != NOT_RECORDED, f"{setting.path} is not a config key"
        if setting.config_key:
            assert recorded_value(defaults, setting.config_key) != NOT_RECORDED, setting.config_key
        for method in setting.methods:
            assert (method, setting.path) not in seen, f"{method} {setting.path} recorded twice"
            seen.add((method, setting.path))


# ------------------------------------------------------------------------------ decoder keys
def test_decoder_keys_reach_the_module_through_the_method(tmp_path):
    from weldfilm.methods.causal_film.method import CausalFiLMMethod

    def decoder_of(overrides):
        cfg = run_config(load_config(overrides=overrides), "causal_film", 0, "fair")
        method = CausalFiLMMethod(cfg, tmp_path / "run", torch.device("cpu"))
        method._meta = {"dims": DIMS, "text_embedding": None, "token_shapes": {}, "text": {}}  # no backbones
        head = method.build_head()
        return head.model.decoder, head.describe()["model_config"]

    decoder, recorded = decoder_of({})
    linears = [m for m in decoder if isinstance(m, torch.nn.Linear)]
    dropouts = [m for m in decoder if isinstance(m, torch.nn.Dropout)]
    assert len(linears) == 2 and [d.p for d in dropouts] == [0.1]  # the authors' effective decoder
    assert sorted(decoder.state_dict()) == ["0.bias", "0.weight", "1.bias", "1.weight", "4.bias", "4.weight"]
    assert recorded["decoder_num_layers"] == 1 and recorded["decoder_dropout"] == 0.1
    decoder, recorded = decoder_of({"causal_film.decoder_num_layers": 2, "causal_film.decoder_dropout": 0.2})
    linears = [m for m in decoder if isinstance(m, torch.nn.Linear)]
    dropouts = [m for m in decoder if isinstance(m, torch.nn.Dropout)]
    assert len(linears) == 3 and [d.p for d in dropouts] == [0.2, 0.2]  # the authors' config's intent
    assert recorded["decoder_num_layers"] == 2 and recorded["decoder_dropout"] == 0.2
    z = torch.randn(4, decoder[0].in_features)
    assert decoder.eval()(z).shape == z.shape


# ------------------------------------------------------------------------------ config.yaml vs schema
# keys where config.yaml's default profile deliberately differs from the schema default; each one's schema
# description says why ("default profile: ...")
DELIBERATE = {
    "data.max_train_good_runs", "synthetic.good_runs", "synthetic.runs_per_class", "synthetic.fewer_photos_fraction",
    "preprocess.video_frames", "preprocess.audio_frames", "preprocess.sensor_length",
    "train.epochs", "train.batch_size", "train.lr", "train.use_ema",
    "m3dm.rgb_final_norm",
}
WHOLE = ("protocols", "ablations", "profiles")  # compared as a whole (protocols) or config-only (the others)


def _leaves(node: dict, prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        elif not (isinstance(value, dict) and prefix == ""):  # `augment: {}` = every default
            yield f"{prefix}{key}", value


def _schema_node(dotted: str) -> dict:
    node = load_yaml(SCHEMA_PATH.read_text())
    for part in dotted.split("."):
        node = node["properties"][part]
    return node


def test_config_yaml_agrees_with_the_schema_defaults():
    raw, defaults = config_yaml(), validate({})
    assert raw["protocols"] == defaults["protocols"], "config.yaml's protocols must equal the schema default"
    differing = set()
    for key, value in _leaves({k: v for k, v in raw.items() if k not in WHOLE}):
        default = recorded_value(defaults, key)
        if not same_value(value, default):
            differing.add(key)
    assert differing == DELIBERATE, (
        f"config.yaml differs from the schema default in {sorted(differing - DELIBERATE)} without a listed reason; "
        f"listed but equal: {sorted(DELIBERATE - differing)}")
    for key in sorted(DELIBERATE):
        assert "default profile" in _schema_node(key).get("description", ""), (
            f"schema description of {key} must say why config.yaml's default profile differs ('default profile: ...')")


# ------------------------------------------------------------------------------ deviations table
def _metadata_runs(cfg, tmp_path, mutate=None) -> dict:
    runs = {}
    for method in cfg["methods"]:
        for protocol in ("fair", "paper_faithful"):
            meta = predicted_metadata(cfg, method, protocol, tmp_path)
            if mutate:
                mutate(method, protocol, meta)
            runs[(method, protocol, None)] = [meta]
    for ablation in cfg["ablations"]:
        runs[("causal_film", None, ablation)] = [predicted_metadata(cfg, "causal_film", "fair", tmp_path, ablation)]
    return runs


def _row(rows, setting, method="causal_film"):
    found = [r for r in rows if r["setting"] == setting and r["method"] == method]
    assert len(found) == 1
    return found[0]


def test_deviations_follow_the_recorded_values(tmp_path):
    cfg = load_config()
    rows = deviation_rows(_metadata_runs(cfg, tmp_path), cfg["methods"])
    padding = _row(rows, "causal_film.view_padding")
    assert padding["differs"] and padding["fair"] == "exclude" and padding["paper_faithful"] == "= authors"
    assert padding["fair_set_by"] == "schema default" and padding["kind"] == FLAW
    warmup = _row(rows, "train.warmup_epochs")
    assert warmup["fair"] == "2" and warmup["paper_faithful"] == "= authors"
    assert _row(rows, "selection_split", "dinomaly")["fair"] == "val"
    assert _row(rows, "selection_split", "dinomaly")["paper_faithful_set_by"] == ""
    decoder = _row(rows, "causal_film.decoder_dropout")
    assert not decoder["differs"] and decoder["fair"] == decoder["paper_faithful"] == "= authors"
    assert "mean_views: mean" in _row(rows, "causal_film.view_pooling")["ablations"]

    # a run with a changed setting appears as a deviation, named with what set it
    changed = load_config(overrides={"causal_film.decoder_dropout": 0.2})
    row = _row(deviation_rows(_metadata_runs(changed, tmp_path), cfg["methods"]), "causal_film.decoder_dropout")
    assert row["differs"] and row["fair"] == row["paper_faithful"] == "0.2" and row["fair_set_by"] == "config"

    # the code records another value (here: the fair run pools padded views too) -> the row follows
    def include(method, protocol, meta):
        meta["config"]["causal_film"]["view_padding"] = "include"

    row = _row(deviation_rows(_metadata_runs(cfg, tmp_path, include), cfg["methods"]), "causal_film.view_padding")
    assert not row["fair_differs"] and row["fair"] == "= authors" and row["fair_set_by"] == ""
    assert "no_film: exclude" in row["ablations"]  # the ablation runs (not mutated) now differ from fair

    # a run that does not record a setting is shown, never taken as a match
    def forget(method, protocol, meta):
        del meta["config"]["causal_film"]["decoder_dropout"]

    row = _row(deviation_rows(_metadata_runs(cfg, tmp_path, forget), cfg["methods"]), "causal_film.decoder_dropout")
    assert row["differs"] and row["fair"] == NOT_RECORDED


def test_deviations_table_is_built_with_the_paper_tables(tmp_path):
    assert "deviations" in TABLE_NAMES
    cfg = tiny_config(seeds=(0,))
    write_results(tmp_path / "results", cfg)
    build_tables(cfg, tmp_path / "results", tmp_path / "tables")
    values = pd.read_csv(tmp_path / "tables" / "deviations.csv", keep_default_na=False)
    padding = values[(values.setting == "causal_film.view_padding") & (values.method == "causal_film")].iloc[0]
    assert padding["fair"] == "exclude" and padding["paper_faithful"] == "= authors" and padding["spec"] == "1, 4.2"
    film = values[values.setting == "causal_film.use_film"].iloc[0]
    assert film["ablations"] == "no_film: no" and film["fair"] == "= authors"
    markdown = (tmp_path / "tables" / "deviations.md").read_text()
    assert "| causal_film.view_padding | Causal-FiLM | include (§1, 4.2) [1] | exclude | = authors |" in markdown
    assert "[1] runs with fewer than 5 photos" in markdown and "Kind `flaw`" in markdown
    tex = (tmp_path / "tables" / "deviations.tex").read_text()
    assert r"\label{tab:deviations}" in tex and r"causal\_film.view\_padding" in tex


# ------------------------------------------------------------------------------ augmented TRAIN split
def test_augmented_train_runs_are_decoded_once_and_augmented_as_before(tiny_config, tmp_path):
    """paper_faithful augments Causal-FiLM's TRAIN runs (no feature cache): with train.cache_inputs each run's
    files are decoded once and every epoch draws the same augmented sample as decoding afresh would."""
    from weldfilm.methods.causal_film.method import CausalFiLMMethod, DecodedOnce
    from weldfilm.data.manifest import build_manifest

    build_manifest(tiny_config["data"]["root"], f"{tiny_config['results']}/data/manifest.csv")
    cfg = run_config(tiny_config, "causal_film", 0, "paper_faithful")
    assert cfg["train"]["use_augmentations"] and cfg["train"]["cache_inputs"]
    kept = CausalFiLMMethod(cfg, tmp_path / "kept", torch.device("cpu")).split_data("train")
    plain_cfg = run_config(prepare({**tiny_config, "train": {**tiny_config["train"], "cache_inputs": False}}),
                           "causal_film", 0, "paper_faithful")
    plain = CausalFiLMMethod(plain_cfg, tmp_path / "plain", torch.device("cpu")).split_data("train")
    assert kept.augment and isinstance(kept.read_arrays, DecodedOnce) and not isinstance(plain.read_arrays, DecodedOnce)
    reads = []
    decode = kept.read_arrays.read_arrays
    kept.read_arrays.read_arrays = lambda index: reads.append(index) or decode(index)
    for epoch in (0, 1):
        kept.set_epoch(epoch)
        plain.set_epoch(epoch)
        for index in range(3):
            a, b = kept[index], plain[index]
            for key in ("video", "post_weld_images", "audio", "sensor"):
                assert torch.equal(a[key], b[key]), (epoch, index, key)
    assert reads == [0, 1, 2]  # decoded in epoch 0 only
    kept.set_epoch(0)
    first = kept[0]["video"]
    kept.set_epoch(1)
    assert not torch.equal(first, kept[0]["video"])  # a fresh augmentation every epoch
