"""Config loading, schema defaults, profiles, protocols, ablations and clear errors."""

import pytest
import yaml

from weldfilm.config import load_config, parse_set_args, prepare, run_config
from weldfilm.errors import ConfigError


def test_default_config_is_valid_and_filled():
    cfg = load_config()
    assert cfg["profile"] == "default"
    assert cfg["train"]["epochs"] >= 1
    assert set(cfg["methods"]) == {"causal_film", "late_fusion", "m3dm", "dinomaly"}


def test_defaults_come_from_the_schema():
    cfg = prepare({})
    assert cfg["data"]["source"] == "synthetic"
    assert cfg["preprocess"]["frame_size"] == 64
    assert cfg["seeds"] == [0, 1, 2]


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"train": {"lr": -1}}, "train.lr"),
        ({"train": {"epocs": 3}}, "train"),
        ({"preprocess": {"image_size": -5}}, "preprocess.image_size"),
        ({"preprocess": {"video_frames": 10**9}}, "preprocess.video_frames"),
        ({"data": {"source": "imaginary"}}, "data.source"),
        ({"seeds": []}, "seeds"),
    ],
)
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        prepare(raw)


def test_text_from_snakemake_config_is_read_as_the_schema_asks():
    # `snakemake --config seeds=[0] workflow={evaluate_in_train_job: false}` hands nested values over as text
    cfg = prepare({"seeds": ["0", "1"], "workflow": {"evaluate_in_train_job": "false"}, "train": {"lr": "1e-3"},
                   "results": "123", "causal_film": {"result_layers": "[2, 3]"}})
    assert cfg["seeds"] == [0, 1] and cfg["workflow"]["evaluate_in_train_job"] is False
    assert cfg["train"]["lr"] == 1e-3 and cfg["results"] == "123"  # a string field stays a string
    assert cfg["causal_film"]["result_layers"] == [2, 3]
    with pytest.raises(ConfigError, match="config key 'workflow.evaluate_in_train_job'"):
        prepare({"workflow": {"evaluate_in_train_job": "maybe"}})


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="epocs"):
        prepare({"train": {"epocs": 3}})


def test_profile_paper_switches_data_and_sizes():
    cfg = load_config(overrides=None)
    paper = prepare({**yaml.safe_load(open("config.yaml")), "profile": "paper"})
    assert paper["data"]["source"] == "real"
    assert paper["backbones"]["source"] == "pretrained"
    assert paper["causal_film"]["d_model"] == 512
    assert cfg["causal_film"]["d_model"] != 512


def test_unknown_profile_is_an_error():
    with pytest.raises(ConfigError, match="unknown profile"):
        prepare({"profile": "nope"})


def test_dotted_overrides_and_parse_set_args():
    overrides = parse_set_args(["train.epochs=3", "causal_film.use_film=false", "seeds=[4, 5]"])
    cfg = load_config(overrides=overrides)
    assert cfg["train"]["epochs"] == 3 and cfg["causal_film"]["use_film"] is False and cfg["seeds"] == [4, 5]
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(overrides={"train.no_such_key": 1})
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_args(["oops"])


def test_run_config_applies_protocol_then_ablation():
    cfg = load_config(overrides={"train.use_ema": True, "train.warmup_epochs": 2})
    run = run_config(cfg, "causal_film", 2, protocol="paper_faithful", ablation="no_film")
    assert run["run"] == {"method": "causal_film", "seed": 2, "protocol": "paper_faithful", "ablation": "no_film"}
    assert run["train"]["use_ema"] is False and run["train"]["warmup_epochs"] == 0
    assert run["causal_film"]["use_film"] is False
    fair = run_config(cfg, "causal_film", 0)
    assert fair["train"]["use_ema"] is True and fair["train"]["warmup_epochs"] == 2


def test_run_config_rejects_unknowns():
    cfg = load_config()
    with pytest.raises(ConfigError, match="unknown method"):
        run_config(cfg, "nope", 0)
    with pytest.raises(ConfigError, match="unknown ablation"):
        run_config(cfg, "causal_film", 0, ablation="nope")
    with pytest.raises(ConfigError, match="causal_film only"):
        run_config(cfg, "m3dm", 0, ablation="no_film")


def test_every_ablation_resolves():
    cfg = load_config()
    for name in cfg["ablations"]:
        run_config(cfg, "causal_film", 0, ablation=name)


def test_profile_paper_shapes_is_the_paper_profile_made_small():
    raw = yaml.safe_load(open("config.yaml"))
    paper = prepare({**raw, "profile": "paper"})
    shapes = prepare({**raw, "profile": "paper_shapes"})
    default = prepare(raw)
    block = raw["profiles"]["paper_shapes"]

    def leaves(node, prefix=""):
        if not isinstance(node, dict) or not node:
            return {prefix[:-1]: node}
        return {k: v for key, value in node.items() for k, v in leaves(value, f"{prefix}{key}.").items()}

    own = set(leaves({k: v for k, v in block.items() if k not in ("extends", "restore", "select")}))
    changed = {key for key, value in leaves(paper).items() if leaves(shapes).get(key, object()) != value}
    allowed = own | {"profile"}
    prefixes = tuple(f"{key}." for key in [*block["restore"], *block["select"]])
    assert sorted(k for k in changed if k not in allowed and not k.startswith(prefixes)) == []  # paper + overrides
    assert shapes["preprocess"] == paper["preprocess"] and shapes["causal_film"] == paper["causal_film"]
    for key in ("image_size", "cloud_size", "point_trans_dim", "point_depth", "point_heads", "point_group_size",
                "point_num_groups", "point_taps"):
        assert shapes["m3dm"][key] == paper["m3dm"][key]
    for section, keys in {"late_fusion": ("audio_sr", "n_fft", "hop_length", "audio_frames", "audio_hidden_channels"),
                          "dinomaly": ("resize", "crop_size", "layer_groups", "decoder_depth")}.items():
        assert {k: shapes[section][k] for k in keys} == {k: paper[section][k] for k in keys}
    assert shapes["data"] == default["data"]  # restored
    assert {**shapes["backbones"], "tiny_size": "tiny"} == default["backbones"]  # restored, then tiny_size
    assert shapes["backbones"]["tiny_size"] == "paper_shapes"
    assert list(shapes["ablations"]) == ["mean_views"]
    assert shapes["ablations"]["mean_views"] == default["ablations"]["mean_views"]
    assert shapes["seeds"] == [0] and shapes["train"]["epochs"] < paper["train"]["epochs"]
    assert shapes["methods"] == paper["methods"] and shapes["protocols"] == paper["protocols"]


def test_profiles_extend_restore_and_select():
    raw = {"train": {"epochs": 7}, "ablations": {"a": {"train.lr": 1.0}, "b": None, "c": None},
           "profiles": {"big": {"train": {"epochs": 50, "lr": 0.5}, "causal_film": {"d_model": 256}},
                        "bigger": {"extends": "big", "causal_film": {"d_model": 512}},
                        "small": {"extends": "bigger", "restore": ["train.epochs"], "select": {"ablations": ["c", "a"]}}}}
    bigger = prepare({**raw, "profile": "bigger"})
    assert bigger["train"]["epochs"] == 50 and bigger["causal_film"]["d_model"] == 512
    small = prepare({**raw, "profile": "small"})
    assert small["train"]["epochs"] == 7  # the config's own value, not big's 50
    assert small["train"]["lr"] == 0.5 and small["causal_film"]["d_model"] == 512
    assert small["ablations"] == {"c": None, "a": {"train.lr": 1.0}}


@pytest.mark.parametrize("profiles, message", [
    ({"p": {"extends": "nope"}}, "profile 'p' extends: unknown profile 'nope'"),
    ({"p": {"extends": "q"}, "q": {"extends": "p"}}, "cycle"),
    ({"p": {"restore": ["train.nope"]}}, "'profiles.p.restore' names 'train.nope'"),
    ({"p": {"select": {"ablations": ["nope"]}}}, "'profiles.p.select.ablations': \\['nope'\\]"),
    ({"p": {"select": {"seeds": ["0"]}}}, "'seeds' is not a mapping"),
    ({"p": {"extends": 3}}, "config key 'profiles.p.extends'"),
    ({"p": {"trian": {"epochs": 3}}}, "'trian'"),
])
def test_bad_profiles_name_the_key(profiles, message):
    with pytest.raises(ConfigError, match=message):
        prepare({"profile": "p", "profiles": profiles})
