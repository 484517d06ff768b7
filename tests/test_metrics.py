"""Metrics against scikit-learn and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from weldfilm.errors import DataError
from weldfilm.metrics import (au_pro, aupro_proxy, bootstrap_auroc_ci, compute_metrics, f1_max, image_auroc,
                              per_defect_auroc, threshold_metrics, youden_threshold)
from weldfilm.metrics.image import rank_auroc


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    codes = np.r_[np.zeros(12, int), np.repeat([1, 3, 7], 6)]
    scores = rng.normal(size=len(codes)) + (codes > 0) * np.where(codes == 7, 0.2, 1.5)
    return codes, scores


def test_auroc_f1_and_threshold_match_hand_and_sklearn(scored):
    codes, scores = scored
    assert image_auroc(codes, scores) == pytest.approx(roc_auc_score(codes > 0, scores))
    # hand case: scores 1,2,3,4 with labels 0,1,0,1 -> pairs (pos>neg): (2>1),(4>1),(4>3) = 3/4
    assert image_auroc([0, 1, 0, 1], [1, 2, 3, 4]) == pytest.approx(0.75)
    # F1-max equals the best F1 over all "score >= t" rules
    best = max(f1_score(codes > 0, scores >= t) for t in scores)
    assert f1_max(codes, scores) == pytest.approx(best)
    # Youden: on a separable case, any threshold between the classes; this one is the lowest positive
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9]) == pytest.approx(0.7)
    t = threshold_metrics([0, 0, 1, 1], [0.1, 0.8, 0.7, 0.9], 0.75)
    assert t["precision"] == pytest.approx(0.5) and t["recall"] == pytest.approx(0.5) and t["f1"] == pytest.approx(0.5)


def test_per_defect_auroc(scored):
    codes, scores = scored
    per = per_defect_auroc(codes, scores)
    keep = (codes == 0) | (codes == 3)
    assert per["porosity"] == pytest.approx(roc_auc_score(codes[keep] == 3, scores[keep]))
    assert per["burnthrough"] is None and len(per) == 11


def test_rank_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(1)
    pos, neg = rng.integers(0, 4, size=(3, 7)).astype(float), rng.integers(0, 4, size=(3, 5)).astype(float)
    for row in range(3):
        ref = roc_auc_score(np.r_[np.ones(7), np.zeros(5)], np.r_[pos[row], neg[row]])
        assert rank_auroc(pos, neg)[row] == pytest.approx(ref)


def test_bootstrap_is_seeded_and_brackets_the_estimate(scored):
    codes, scores = scored
    a = bootstrap_auroc_ci(codes, scores, resamples=300, seed=5)
    assert a == bootstrap_auroc_ci(codes, scores, resamples=300, seed=5)
    assert a != bootstrap_auroc_ci(codes, scores, resamples=300, seed=6)
    assert a[0] < image_auroc(codes, scores) < a[1]


def test_au_pro_toy_case():
    # two 1x4 images; image 1 has a 2-pixel region; scores rank one region pixel above every background pixel
    maps = np.array([[[0.1, 0.2, 0.3, 0.4]], [[0.9, 0.35, 0.0, 0.0]]])
    masks = np.array([[[0, 0, 0, 0]], [[1, 1, 0, 0]]])
    # curve: t=0.9 -> fpr 0, pro 0.5; t=0.4 -> fpr 1/6, pro .5; t=0.35 -> fpr 1/6, pro 1; ...
    # area on [0, 1/6]: 0.5 * 1/6 ; normalised by the limit -> 0.5
    assert au_pro(maps, masks, limits=(1 / 6,))[str(1 / 6)] == pytest.approx(0.5)
    # on [0, 1/3]: 0.5*(1/6) + 1.0*(1/6) = 0.25 -> /(1/3) = 0.75
    assert au_pro(maps, masks, limits=(1 / 3,))[str(1 / 3)] == pytest.approx(0.75)
    # perfect separation -> 1.0 everywhere; the limit is interpolated linearly
    perfect = au_pro(np.array([[[0.0, 0.0]], [[1.0, 1.0]]]), np.array([[[0, 0]], [[1, 1]]]), limits=(0.3, 0.05))
    assert perfect == {"0.3": pytest.approx(1.0), "0.05": pytest.approx(1.0)}


def test_proxy_with_uniform_maps_is_resolution_free(scored):
    codes, scores = scored
    small = aupro_proxy(codes, scores)
    big = aupro_proxy(codes, scores, maps=np.repeat(np.repeat(scores[:, None, None], 8, 1), 8, 2))
    assert small.keys() == {"0.3", "0.1", "0.05", "0.01"}
    assert small == pytest.approx(big)


def test_compute_metrics_report_and_carried_threshold(scored):
    codes, scores = scored
    own = compute_metrics(codes, scores, codes, split="test", bootstrap=100)
    assert own["i_auroc"] == pytest.approx(roc_auc_score(codes > 0, scores))
    assert own["threshold"]["source_split"] == "test" and own["p_aupro_is_proxy"]
    carried = compute_metrics(codes, scores, codes, split="test", bootstrap=100, threshold=0.5, threshold_source="val")
    assert carried["threshold"]["value"] == 0.5 and carried["threshold"]["source_split"] == "val"
    with pytest.raises(DataError, match="only one class"):
        compute_metrics(np.zeros(4), np.arange(4.0), np.zeros(4), split="val")
    with pytest.raises(DataError, match="NaN"):
        compute_metrics([0, 1], [0.0, np.nan], [0, 1], split="val")


def test_pixel_auroc_equals_sklearn_over_all_pixels_with_ties():
    from weldfilm.metrics import pixel_auroc, pixel_auroc_proxy

    rng = np.random.default_rng(2)
    maps = rng.integers(0, 6, size=(7, 5, 4)).astype(np.float32)  # many ties
    masks = rng.random((7, 5, 4)) < 0.3
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    labels = np.array([0, 3, 0, 1, 5, 0, 2])
    whole = np.broadcast_to((labels != 0)[:, None, None], maps.shape)
    assert pixel_auroc_proxy(labels, maps) == pytest.approx(roc_auc_score(whole.ravel(), maps.ravel()))
    # hand case: good map {1, 2}, defective map {2, 3}: pairs 3>1, 3>2, 2>1, 2=2 (one half) -> 3.5 / 4
    assert pixel_auroc_proxy([0, 1], np.array([[[1.0, 2.0]], [[2.0, 3.0]]])) == pytest.approx(0.875)


def test_pixel_auroc_proxy_of_uniform_maps_is_the_image_auroc(scored):
    from weldfilm.metrics import pixel_auroc_proxy

    codes, scores = scored
    uniform = np.repeat(np.repeat(scores[:, None, None], 3, 1), 4, 2)
    assert pixel_auroc_proxy(codes, uniform) == pytest.approx(image_auroc(codes, scores))
    with pytest.raises(ValueError, match="one \\(H, W\\) map per label"):
        pixel_auroc_proxy(codes[:-1], uniform)


def test_compute_metrics_writes_the_pixel_auroc_proxy_only_for_real_maps(scored):
    codes, scores = scored
    rng = np.random.default_rng(3)
    maps = rng.random((len(codes), 4, 4)) + (codes > 0)[:, None, None] * rng.random((len(codes), 1, 1))
    with_maps = compute_metrics(codes, scores, codes, split="test", bootstrap=10, maps=maps)
    whole = np.broadcast_to((codes > 0)[:, None, None], maps.shape)
    assert with_maps["p_auroc_proxy"] == pytest.approx(roc_auc_score(whole.ravel(), maps.ravel()))
    assert with_maps["p_auroc_is_proxy"] and any(n.startswith("p_auroc_proxy: PROXY") for n in with_maps["notes"])
    without = compute_metrics(codes, scores, codes, split="test", bootstrap=10)
    assert without["p_auroc_proxy"] is None and without["p_aupro_proxy"]
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN/inf"):
        compute_metrics(codes, scores, codes, split="test", bootstrap=10, maps=bad)


def test_main_table_shows_the_pixel_proxies_beside_the_image_metrics(tmp_path):
    import pandas as pd

    from paper_fakes import tiny_config, write_results
    from weldfilm.io import write_json
    from weldfilm.paper.results import main_runs
    from weldfilm.paper.tables import build_tables

    cfg = tiny_config(seeds=(0,))
    results = tmp_path / "results"
    write_results(results, cfg)
    rng = np.random.default_rng(4)
    expected = {}
    for key in main_runs(cfg):
        test_dir = results / key.relative_dir() / "eval" / "test"
        scores = pd.read_csv(test_dir / "scores.csv")
        maps = None
        if key.method in ("m3dm", "dinomaly"):
            maps = rng.random((len(scores), 4, 4)) + scores["label"].to_numpy()[:, None, None] * 0.3
        metrics = compute_metrics(scores["label"], scores["score"], scores["class_code"], split="test", bootstrap=10,
                                  maps=maps)
        write_json(test_dir / "metrics.json", metrics)
        expected[(key.protocol, key.method)] = metrics
    build_tables(cfg, results, tmp_path / "tables")
    values = pd.read_csv(tmp_path / "tables" / "main.csv").set_index("method")
    for (protocol, method), metrics in expected.items():
        p_auroc = values.loc[method, f"{protocol}_p_auroc_proxy_mean"]
        if method in ("m3dm", "dinomaly"):
            assert p_auroc == pytest.approx(metrics["p_auroc_proxy"])
        else:
            assert np.isnan(p_auroc) and metrics["p_auroc_proxy"] is None
        p_aupro = values.loc[method, f"{protocol}_p_aupro_proxy_0.3_mean"]
        assert p_aupro == pytest.approx(metrics["p_aupro_proxy"]["0.3"])
    markdown = (tmp_path / "tables" / "main.md").read_text()
    assert "P-AUROC / P-AUPRO@0.3 (fair)" in markdown and "PROXIES" in markdown
    m3dm = expected[("fair", "m3dm")]
    row = next(line for line in markdown.splitlines() if line.startswith("| M3DM"))
    assert f"{100 * m3dm['p_auroc_proxy']:.1f} / {100 * m3dm['p_aupro_proxy']['0.3']:.1f}" in row
