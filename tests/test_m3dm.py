"""M3DM baseline: greedy selection, pseudo point cloud, point transformer, memory-bank scores, fusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weldfilm.methods.m3dm.bank import DecisionFuser, PatchBank, distance_maps, reweighted_score
from weldfilm.metrics.maps import gaussian_blur
from weldfilm.methods.m3dm.coreset import coreset_indices, farthest_point_sample, greedy_farthest_selection
from weldfilm.methods.m3dm.point import (PointTransformer, features_on_patch_grid, interpolate_to_points, knn_group,
                                           load_point_mae_checkpoint, pseudo_point_cloud)
from weldfilm.errors import BackboneError, ConfigError


def test_greedy_selection_picks_the_farthest_points_of_a_hand_case():
    # 1-D points: start at 0, then the farthest (10), then the one farthest from both {0, 10} (4.9 -> 5).
    points = torch.tensor([[0.0], [1.0], [10.0], [5.0], [9.0], [4.9]])
    assert greedy_farthest_selection(points.unsqueeze(0), 3)[0].tolist() == [0, 2, 3]


def test_farthest_point_sample_takes_the_square_corners_first():
    corners = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]]
    inner = [[0.5, 0.5, 0], [0.4, 0.6, 0], [0.6, 0.5, 0]]
    points = torch.tensor([corners[0], *inner, *corners[1:]], dtype=torch.float32)
    picked = farthest_point_sample(torch.stack([points, points.flip(0)]), 4)
    assert sorted(points[picked[0]].tolist()) == sorted(corners)
    assert picked[0, 1].item() == 6  # (1,1,0) is the farthest from the start (0,0,0)
    assert sorted(points.flip(0)[picked[1]].tolist()) == sorted(corners)  # starting at (1,1,0)


def test_coreset_selects_the_outlying_clusters_and_reports_the_projection():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0] * 8, [20.0] * 8, [-20.0] + [0.0] * 7])
    bank = torch.from_numpy(np.concatenate([c + 0.01 * rng.standard_normal((50, 8)) for c in centres]).astype(np.float32))
    picked, info = coreset_indices(bank, fraction=0.02, eps=0.9, seed=0)
    assert len(picked) == 3 and info["selected"] == 3 and info["of"] == 150
    assert sorted((picked // 50).tolist()) == [0, 1, 2]  # one entry from each cluster
    assert info["projected_dim"] is None and "projection_skipped" in info  # JL dim >= 8 features
    wide = torch.from_numpy(rng.standard_normal((60, 4000)).astype(np.float32))
    picked, info = coreset_indices(wide, fraction=0.1, eps=0.9, seed=0)
    assert len(picked) == 6 and 0 < info["projected_dim"] < 4000


def test_pseudo_point_cloud_shape_range_and_tiling():
    table = np.array([[0.0, 10.0], [5.0, 20.0], [10.0, 30.0]])  # global min 0, max 30
    cloud = pseudo_point_cloud(table, size=224)
    assert cloud.shape == (3, 224, 224) and cloud.dtype == torch.float32
    assert cloud.min() >= 0 and cloud.max() <= 1
    x, y, depth = cloud
    assert torch.allclose(x[0], torch.linspace(0, 1, 224)) and torch.allclose(y[:, 0], torch.linspace(0, 1, 224))
    assert torch.equal(depth[0], depth[-1])  # tiled: every row is the same signal
    # row means of the normalised table: (0+1/3)/2, (1/6+2/3)/2, (1/3+1)/2 at the ends and middle
    assert depth[0, 0].item() == pytest.approx(1 / 6) and depth[0, -1].item() == pytest.approx(2 / 3)
    assert torch.all(pseudo_point_cloud(np.ones((5, 6)), 16)[2] == 0)


def test_knn_grouping_shapes_and_nearest_members():
    points = torch.rand(2, 200, 3)
    centres = points[:, :5]
    neighbourhoods, indices = knn_group(points, centres, group_size=7)
    assert neighbourhoods.shape == (2, 5, 7, 3) and indices.shape == (2, 5, 7)
    assert torch.equal(indices[:, :, 0], torch.arange(5).expand(2, 5))  # each centre is its own nearest point
    assert torch.allclose(neighbourhoods[:, :, 0], torch.zeros(2, 5, 3))  # relative to the centre
    far = torch.cdist(centres[0], points[0]).sort(dim=1).values[:, 6]
    assert torch.all(neighbourhoods[0].norm(dim=-1).max(dim=1).values <= far + 1e-6)


def test_point_transformer_features_and_patch_projection():
    torch.manual_seed(0)
    model = PointTransformer(trans_dim=16, depth=4, num_heads=2, group_size=8, num_groups=12, taps=(1, 3)).eval()
    cloud = torch.stack([pseudo_point_cloud(np.random.default_rng(i).random((30, 6)), 32) for i in range(2)])
    points = cloud.flatten(2).transpose(1, 2)
    with torch.no_grad():
        features, centres = model(points)
    assert features.shape == (2, 12, 32) and model.out_dim == 32 and centres.shape == (2, 12, 3)
    grid = features_on_patch_grid(cloud, centres, features, (4, 4))
    assert grid.shape == (2, 32, 4, 4)
    assert features_on_patch_grid(cloud, centres, features, (7, 7)).shape == (2, 32, 7, 7)
    # M3DM's pipeline by hand: features on every point, 3 x 3 average pool (stride 1, 32 -> 30), then 30 -> 4 x 4
    dense = interpolate_to_points(points, centres, features).transpose(1, 2).reshape(2, 32, 32, 32)
    by_hand = torch.nn.functional.adaptive_avg_pool2d(torch.nn.functional.avg_pool2d(dense, 3, stride=1), (4, 4))
    assert torch.allclose(grid, by_hand, atol=1e-6)
    # a patch is a mean over many points, no longer one group's feature (the old nearest-centre rule)
    flat = grid.flatten(2).transpose(1, 2)
    assert not any(torch.allclose(flat[0, 5], f) for f in features[0])


def test_interpolation_onto_points_uses_inverse_squared_distances_of_the_three_nearest_centres():
    centres = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [9.0, 9.0, 9.0]]])
    features = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [100.0, 100.0]]])
    point = torch.tensor([[[0.5, 0.5, 0.0]]])  # squared distances 0.5, 0.5, 2.5 (and far from the 4th)
    weights = torch.tensor([1 / 0.5, 1 / 0.5, 1 / 2.5])
    expected = (weights[:, None] * features[0, :3]).sum(0) / weights.sum()
    assert torch.allclose(interpolate_to_points(point, centres, features)[0, 0], expected, atol=1e-5)
    # a point on a centre takes that centre's feature; chunking does not change anything
    many = torch.rand(1, 50, 3)
    on_centre = torch.cat([centres, many], 1)
    out = interpolate_to_points(on_centre, centres, features)
    assert torch.allclose(out[0, :4], features[0], atol=1e-4)
    assert torch.allclose(interpolate_to_points(on_centre, centres, features, chunk=7), out)
    # one centre: every point gets its feature
    one = interpolate_to_points(many, centres[:, :1], features[:, :1])
    assert torch.allclose(one, features[:, :1].expand(1, 50, 2))


def test_point_mae_checkpoint_loads_strictly(tmp_path):
    torch.manual_seed(0)
    source = PointTransformer(trans_dim=16, depth=2, num_heads=2, group_size=4, num_groups=4, taps=(1,))
    state = {"base_model": {f"module.MAE_encoder.{k}": v for k, v in source.state_dict().items()}}
    state["base_model"]["module.MAE_decoder.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "pointmae.pth")
    torch.manual_seed(1)
    target = PointTransformer(trans_dim=16, depth=2, num_heads=2, group_size=4, num_groups=4, taps=(1,))
    info = load_point_mae_checkpoint(target, tmp_path / "pointmae.pth")
    assert info["tensors_loaded"] == len(source.state_dict())
    assert torch.equal(target.norm.weight, source.norm.weight)
    wider = PointTransformer(trans_dim=16, depth=3, num_heads=2, group_size=4, num_groups=4, taps=(1,))
    with pytest.raises(BackboneError, match="lacks weights"):
        load_point_mae_checkpoint(wider, tmp_path / "pointmae.pth")
    with pytest.raises(BackboneError, match="does not exist"):
        load_point_mae_checkpoint(target, tmp_path / "missing.pth")


def test_reweighted_score_on_a_toy_bank():
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    patches = torch.tensor([[0.0, 0.1], [3.0, 0.0]])  # worst patch (3,0): nearest entry (1,0) at distance 2
    score, nearest = reweighted_score(patches, bank, n_reweight=3)
    assert torch.allclose(nearest, torch.tensor([0.1, 2.0]))
    # neighbours of (1,0) other than itself: (0,0) and (0,1); distances from (3,0): 3 and sqrt(10)
    root = np.sqrt(2)
    weight = 1 - np.exp(2 / root) / (np.exp(3 / root) + np.exp(np.sqrt(10) / root))
    assert score.item() == pytest.approx(weight * 2, rel=1e-5)
    # hiding entries (leave one run out) changes the nearest entry
    score_hidden, nearest_hidden = reweighted_score(patches, bank, n_reweight=3,
                                                    allowed=torch.tensor([True, False, True, True]))
    assert nearest_hidden[1].item() == pytest.approx(3.0) and score_hidden.item() != pytest.approx(score.item())
    scaled, _ = reweighted_score(patches, bank, n_reweight=3, distance_scale=1000.0)
    assert scaled.item() == pytest.approx(0.5 * 2 / 1000, rel=1e-2)  # weight ~ 1 - 1/2 when distances vanish


def test_patch_bank_standardises_and_round_trips():
    patches = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    bank, info = PatchBank.build(patches, torch.arange(20) // 4, f_coreset=0.5, eps=0.9, seed=0)
    assert bank.patches.shape == (10, 2) and info["selected"] == 10
    assert bank.mean == pytest.approx(19.5) and torch.allclose(bank.standardise(patches).mean(), torch.tensor(0.0))
    again = PatchBank.from_state(bank.state("rgb"), "rgb")
    assert torch.equal(again.patches, bank.patches) and torch.equal(again.sources, bank.sources)


def test_decision_fuser_fits_scores_and_round_trips():
    rng = np.random.default_rng(0)
    train = np.abs(rng.normal([1.0, 0.1], [0.2, 0.02], size=(200, 2)))
    fuser = DecisionFuser(nu=0.5, max_iter=1000, seed=42).fit(train)
    test = np.array([[1.0, 0.1], [3.0, 0.3], [1.0, 0.5]])
    scores = fuser.score(test)
    assert scores[1] > scores[0] and scores[2] > scores[0]  # larger distances -> more anomalous
    from sklearn.linear_model import SGDOneClassSVM

    reference = SGDOneClassSVM(nu=0.5, max_iter=1000, random_state=42).fit(train)
    assert np.allclose(scores, reference.score_samples(test))
    assert np.allclose(DecisionFuser.from_state(fuser.state()).score(test), scores)


def test_distance_maps_upsample_and_blur():
    distances = torch.zeros(1, 16)
    distances[0, 5] = 1.0
    maps = distance_maps(distances, (4, 4), size=32, sigma=2.0)
    assert maps.shape == (1, 32, 32)
    peak = torch.nonzero(maps[0] == maps[0].max())[0].tolist()
    assert 8 <= peak[0] <= 15 and 8 <= peak[1] <= 15  # patch (1, 1) of the 4x4 grid
    assert torch.allclose(gaussian_blur(torch.ones(1, 1, 8, 8), 1.5), torch.ones(1, 1, 8, 8))


def tiny_m3dm_config(tiny_config, protocol: str = "fair") -> dict:
    """A run config of M3DM on the tiny synthetic set (manifest + tiny backbones written here)."""
    from pathlib import Path

    from weldfilm.config import run_config
    from weldfilm.data.manifest import build_manifest
    from weldfilm.models.tiny import write_tiny_backbones

    build_manifest(tiny_config["data"]["root"], Path(tiny_config["results"]) / "data" / "manifest.csv")
    write_tiny_backbones(tiny_config["backbones"]["dir"], seed=0)
    cfg = run_config(tiny_config, "m3dm", seed=0, protocol=protocol)
    cfg["evaluation"]["bootstrap"] = 10
    cfg["m3dm"].update(image_size=64, cloud_size=32, point_trans_dim=16, point_depth=2, point_heads=2,
                       point_group_size=8, point_num_groups=16, point_taps=[0, 1], f_coreset=0.25,
                       map_size=16, blur_sigma=1.0)
    return cfg


@pytest.fixture
def m3dm_run(tiny_config, tmp_path):
    return tiny_m3dm_config(tiny_config), tmp_path / "run"


def test_train_and_evaluate_on_the_tiny_synthetic_set(m3dm_run):
    import pandas as pd
    from safetensors.torch import load_file

    from weldfilm.methods.m3dm.method import M3DMMethod
    from training_helpers import train_and_score_both_ways

    from weldfilm.io import read_json

    cfg, run_dir = m3dm_run
    metadata, metrics = train_and_score_both_ways(cfg, run_dir)
    described, summary = metadata["describe"], metadata["fit"]
    assert metadata["selection_split"] is None and described["method_name"] == "DINO+Point_MAE"
    assert "random-init" in described["point_backbone"] and described["augmentation"] is False
    assert metadata["token_shapes"] == {"rgb_tokens": [65, 32], "point_groups": [16, 32], "patch_grid": [8, 8],
                                        "point_patch_grid": [8, 8]}
    assert summary["patch_grid"] == [8, 8] and summary["feature_dims"] == {"point": 32, "rgb": 32}
    assert summary["patches_per_run"] == {"point": 64, "rgb": 64}
    assert summary["seg_fuser_rows"] == summary["train_runs"] * 16 * 16  # the 16 x 16 maps, as applied
    assert "interpolate" in described["point_to_patch"] and "blur" in described["seg_fuser_fit"]
    assert summary["fusion_fit_scores"] == "leave_one_run_out"
    banks = load_file(str(run_dir / "checkpoints" / "m3dm_banks.safetensors"))
    assert banks["rgb.patches"].shape == (summary["coreset"]["rgb"]["selected"], 32)
    assert read_json(run_dir / "checkpoints" / "m3dm_fusion.json")["fusers"]["detect"]["coef"] is not None

    scores = pd.read_csv(run_dir / "eval" / "test" / "scores.csv")
    method = M3DMMethod(cfg, run_dir, torch.device("cpu"))
    assert scores["sample_id"].tolist() == method.dataset("test").sample_ids
    assert np.isfinite(scores["score"]).all() and scores["score"].nunique() > 1
    assert metrics["n"] == len(scores) and 0 <= metrics["i_auroc"] <= 1
    print("tiny test I-AUROC", metrics["i_auroc"])
    frame = method.score("test")
    assert {"score_point", "score_rgb"} <= set(frame.columns)
    assert np.allclose(frame["score"], scores["score"])
    maps = method.anomaly_maps("test")
    assert maps.shape == (len(scores), 16, 16) and np.isfinite(maps).all()
    resumed = M3DMMethod(cfg, run_dir, torch.device("cpu")).fit(resume=True)
    assert resumed["resumed"] and resumed["coreset"] == summary["coreset"]


def test_leave_one_run_out_hides_the_runs_own_bank_entries(m3dm_run):
    from weldfilm.methods.m3dm.method import M3DMMethod

    cfg, run_dir = m3dm_run
    cfg["m3dm"].update(f_coreset=1.0, max_train_samples=4)  # the bank keeps every patch, run 0's first
    method = M3DMMethod(cfg, run_dir, torch.device("cpu"))
    method.fit()
    run0 = {key: bank.patches[bank.sources == 0] * bank.std + bank.mean for key, bank in method.banks.items()}
    in_sample_scores, in_sample_distances = method._sample_scores(run0)
    left_out_scores, left_out_distances = method._sample_scores(run0, exclude_run=0)
    in_sample_distances, left_out_distances = (torch.stack([d[k] for k in ("point", "rgb")])
                                               for d in (in_sample_distances, left_out_distances))
    assert torch.allclose(in_sample_distances, torch.zeros_like(in_sample_distances), atol=1e-2)
    assert np.allclose(in_sample_scores, 0, atol=1e-2)  # the authors' in-sample fit sees zero distances
    assert (left_out_distances.sum(dim=1) > 0).all() and (left_out_scores > 0).all()


def test_feature_extractor_aligns_rgb_and_point_patches_and_optional_final_norm():
    from transformers import ViTConfig, ViTModel

    from weldfilm.methods.m3dm.method import M3DMFeatures

    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             image_size=32, patch_size=8)).eval()
    point = PointTransformer(trans_dim=8, depth=1, num_heads=2, group_size=4, num_groups=6, taps=(0,))
    images = torch.rand(2, 3, 48, 48)  # resized to image_size 32 -> 4 x 4 patches
    clouds = torch.stack([pseudo_point_cloud(np.random.default_rng(i).random((10, 6)), 16) for i in range(2)])
    normed = M3DMFeatures(vit, point, image_size=32, rgb_final_norm=True)
    rgb, point_patches = normed(images, clouds)
    assert rgb.shape == (2, 16, 16) and point_patches.shape == (2, 16, 8) and normed.grid == (4, 4)
    raw, _ = M3DMFeatures(vit, point, image_size=32, rgb_final_norm=False)(images, clouds)
    assert torch.allclose(vit.layernorm(raw), rgb, atol=1e-5) and not torch.allclose(raw, rgb)
    with pytest.raises(ConfigError, match="multiple of the RGB patch size"):
        M3DMFeatures(vit, point, image_size=30)


@pytest.mark.parametrize("protocol", ["fair", "paper_faithful"])
def test_leak_guard_banks_and_fusers_see_only_good_train_runs(tiny_config, tmp_path, monkeypatch, protocol):
    """Every sample that reaches a memory bank or a fuser is a good TRAIN run (spy + recorded provenance).

    ``paper_faithful`` sets ``m3dm.fusion_fit_scores: in_sample`` (the authors' runner): the fusers are
    fitted on the same good TRAIN runs, scored with their own patches left in the bank; no other
    split is read either way.
    """
    from pathlib import Path

    from weldfilm.methods.m3dm import method as m3dm
    from weldfilm.data.manifest import read_manifest
    from weldfilm.io import read_json

    cfg = tiny_m3dm_config(tiny_config, protocol)
    cfg["m3dm"]["max_train_samples"] = 4
    manifest = read_manifest(Path(cfg["results"]) / "data" / "manifest.csv")
    good_train = manifest[(manifest["SPLIT"].str.upper() == "TRAIN") & (manifest["CLASS_CODE"].astype(int) == 0)]
    expected = good_train["SUBDIRS"].tolist()[:4]
    assert len(good_train) > 4  # the limit is what cuts the list here

    loaded, bank_rows, fuser_rows = [], [], []
    original_batches, original_build, original_fit = (m3dm.M3DMMethod._batches, m3dm.PatchBank.build.__func__,
                                                      m3dm.DecisionFuser.fit)

    def spy_batches(self, split, *args, **kwargs):
        for ids, rgb, point in original_batches(self, split, *args, **kwargs):
            loaded.append((split, list(ids)))
            yield ids, rgb, point

    def spy_build(cls, patches, sources, *args, **kwargs):
        bank_rows.append((patches.shape[0], sorted(set(sources.tolist()))))
        return original_build(cls, patches, sources, *args, **kwargs)

    def spy_fit(self, features):
        fuser_rows.append(len(features))
        return original_fit(self, features)

    monkeypatch.setattr(m3dm.M3DMMethod, "_batches", spy_batches)
    monkeypatch.setattr(m3dm.PatchBank, "build", classmethod(spy_build))
    monkeypatch.setattr(m3dm.DecisionFuser, "fit", spy_fit)
    method = m3dm.M3DMMethod(cfg, tmp_path / "run", torch.device("cpu"))
    summary = method.fit()

    assert {split for split, _ in loaded} == {"train"}
    assert [sid for _, ids in loaded for sid in ids] == expected
    # the banks hold the patches of exactly these runs (sources index the loaded runs)
    assert bank_rows == [(4 * 64, [0, 1, 2, 3])] * 2
    # the detect fuser: one row per loaded run; the seg fuser: one row per map pixel of those runs
    assert fuser_rows == [4, 4 * 16 * 16]
    recorded = read_json(tmp_path / "run" / "checkpoints" / "m3dm_fusion.json", "fusion file")["provenance"]
    assert recorded["bank_sample_ids"] == recorded["fuser_sample_ids"] == expected and recorded["split"] == "train"
    fit_scores = "in_sample" if protocol == "paper_faithful" else "leave_one_run_out"
    assert summary["fusion_fit_scores"] == recorded["fusion_fit_scores"] == fit_scores
    assert set(expected) <= set(good_train["SUBDIRS"])


def test_paper_profile_pins_m3dm_sizes():
    """Spec 10.4.2, read from config.yaml's ``profiles.paper`` through weldfilm.config: 224 px images in
    28 x 28 patches of DINO ViT-B/8 with 768 channels; point features 1152 = 3 x 384 from taps [3, 7, 11]
    of a 384-wide, 12-block point transformer; M3DM's 56 x 56 point patch grid."""
    import yaml
    from transformers import ViTConfig, ViTModel

    from weldfilm.methods.m3dm.method import M3DMFeatures
    from weldfilm.config import DEFAULT_CONFIG, prepare

    paper = prepare({**yaml.safe_load(DEFAULT_CONFIG.read_text()), "profile": "paper"})["m3dm"]
    point = PointTransformer(paper["point_trans_dim"], paper["point_depth"], paper["point_heads"],
                             paper["point_group_size"], paper["point_num_groups"], tuple(paper["point_taps"]))
    assert point.out_dim == 1152 == 3 * 384 and point.taps == (3, 7, 11) and len(point.blocks.blocks) == 12
    assert (paper["point_group_size"], paper["point_num_groups"]) == (128, 1024) and paper["cloud_size"] == 224
    assert paper["image_size"] == 224 and paper["image_size"] // paper["rgb_patch_size"] == 28
    assert paper["rgb_channels"] == 768 and paper["rgb_final_norm"] is True and paper["point_grid"] == 56

    # A one-block ViT with the paper's patch size and width: 28 x 28 patches of 768 channels.
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=paper["rgb_channels"], num_hidden_layers=1, num_attention_heads=12,
                             intermediate_size=64, image_size=paper["image_size"],
                             patch_size=paper["rgb_patch_size"])).eval()
    small_point = PointTransformer(trans_dim=8, depth=1, num_heads=2, group_size=16, num_groups=32, taps=(0,))
    extractor = M3DMFeatures(vit, small_point, paper["image_size"], paper["rgb_final_norm"], paper["point_grid"],
                             paper["rgb_patch_size"], paper["rgb_channels"])
    cloud = pseudo_point_cloud(np.random.default_rng(0).random((50, 6)), paper["cloud_size"]).unsqueeze(0)
    rgb, point_patches = extractor(torch.rand(1, 3, 224, 224), cloud)
    assert rgb.shape == (1, 28 * 28, 768) and point_patches.shape == (1, 56 * 56, 8)
    assert extractor.shapes["patch_grid"] == [28, 28] and extractor.shapes["point_patch_grid"] == [56, 56]
    narrow = ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                image_size=224, patch_size=8))
    with pytest.raises(BackboneError, match="768"):
        M3DMFeatures(narrow, small_point, 224, rgb_patch_size=8, rgb_channels=paper["rgb_channels"])
    with pytest.raises(BackboneError, match="patch size 8"):
        M3DMFeatures(vit, small_point, 224, rgb_patch_size=16)


@pytest.mark.slow
def test_encoder_cache_is_built_once_per_split_shared_and_gives_the_live_scores(tiny_config, tmp_path, monkeypatch):
    """Issue 11 item 2: frozen encoder outputs once per split; RGB shared by every seed and protocol, point
    features by the runs of a seed; the scores equal those of running the encoders in the job."""
    import copy
    import json
    import shutil

    from weldfilm.methods.m3dm import cache as m3dm_cache, method as m3dm

    extracted = []
    original_extract = m3dm.M3DMMethod._extract

    def spy_extract(self, dataset, desc):
        extracted.append((self.cfg["run"]["protocol"], self.seed, desc))
        yield from original_extract(self, dataset, desc)

    monkeypatch.setattr(m3dm.M3DMMethod, "_extract", spy_extract)

    def fit_and_score(cfg, name, seed=0):
        cfg = copy.deepcopy(cfg)
        cfg["run"]["seed"] = seed
        method = m3dm.M3DMMethod(cfg, tmp_path / name, torch.device("cpu"))
        method.fit()
        return method, method.score("test"), method.anomaly_maps("test")

    fair, paper = tiny_m3dm_config(tiny_config, "fair"), tiny_m3dm_config(tiny_config, "paper_faithful")
    first, scores, maps = fit_and_score(fair, "fair0")
    assert [d for _, _, d in extracted] == ["M3DM encoder cache train", "M3DM encoder cache test"]
    rgb_test = m3dm_cache.cache_path(fair, "rgb", 0, "test")
    inode = rgb_test.stat().st_ino
    extracted.clear()
    _, paper_scores, _ = fit_and_score(paper, "paper0")
    assert extracted == []  # the other protocol of the seed reads both caches
    extracted.clear()
    _, seed1_scores, _ = fit_and_score(fair, "fair1", seed=1)
    assert len(extracted) == 2  # a new random point transformer: its point features are built ...
    assert rgb_test.stat().st_ino == inode  # ... the RGB cache is reused as it is
    assert m3dm_cache.cache_path(fair, "point", 1, "test").is_file()
    assert not np.allclose(seed1_scores["score"], scores["score"])

    live_cfg = copy.deepcopy(fair)
    live_cfg["m3dm"]["encoder_cache"] = False
    extracted.clear()
    live, live_scores, live_maps = fit_and_score(live_cfg, "live0")
    assert [d for _, _, d in extracted] == ["M3DM memory bank: TRAIN features", "M3DM scoring test"]
    assert np.array_equal(live_scores["score"].to_numpy(), scores["score"].to_numpy())
    assert np.array_equal(live_maps, maps) and live.token_shapes() == first.token_shapes()

    # stale-cache protection: a sidecar with another key is rebuilt, never read
    sidecar = rgb_test.with_suffix(".json")
    stale = json.loads(sidecar.read_text())
    stale["key"] = "stale"
    sidecar.write_text(json.dumps(stale))
    extracted.clear()
    fit_and_score(fair, "fair0_again")
    assert [d for _, _, d in extracted] == ["M3DM encoder cache test"]
    assert json.loads(sidecar.read_text())["key"] == m3dm_cache.cache_key(fair, "rgb", 0)

    # the keys follow what shapes the features: backbone content, seed of a random point transformer
    assert m3dm_cache.cache_key(fair, "rgb", 0) == m3dm_cache.cache_key(fair, "rgb", 1)
    assert m3dm_cache.cache_key(fair, "point", 0) != m3dm_cache.cache_key(fair, "point", 1)
    moved = copy.deepcopy(fair)
    moved["backbones"]["m3dm_rgb"] = str(tmp_path / "vit_copy")
    shutil.copytree(fair["backbones"]["m3dm_rgb"], moved["backbones"]["m3dm_rgb"])
    before = m3dm_cache.cache_key(moved, "rgb", 0)
    (tmp_path / "vit_copy" / "extra.txt").write_text("changed")
    assert m3dm_cache.cache_key(moved, "rgb", 0) != before


def test_encoder_cache_folders_follow_the_synthetic_settings_and_the_backbone_precision():
    """A regenerated synthetic set keeps its run names (and often its manifest): the folders must differ;
    bf16 RGB features differ from fp32 ones; the point features do not pass through the ViT."""
    import copy

    from weldfilm.methods.m3dm import cache as m3dm_cache
    from weldfilm.config import load_config, run_config

    base = run_config(load_config(), "m3dm", 0)
    stronger = copy.deepcopy(base)
    stronger["synthetic"]["defect_strength"] = 2.0
    bf16 = copy.deepcopy(base)
    bf16["train"]["backbone_precision"] = "bf16"
    more_workers = copy.deepcopy(base)
    more_workers["synthetic"]["workers"] = 3
    for kind in m3dm_cache.KINDS:
        assert m3dm_cache.cache_dir(stronger, kind, 0) != m3dm_cache.cache_dir(base, kind, 0), kind
        assert m3dm_cache.cache_dir(more_workers, kind, 0) == m3dm_cache.cache_dir(base, kind, 0), kind
    assert m3dm_cache.cache_dir(bf16, "rgb", 0) != m3dm_cache.cache_dir(base, "rgb", 0)
    assert m3dm_cache.cache_dir(bf16, "point", 0) == m3dm_cache.cache_dir(base, "point", 0)
