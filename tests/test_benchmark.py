"""The benchmark: report and figures are written, filters beat the input, runs are repeatable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from usdespeckle import benchmark
from usdespeckle.benchmark import INPUT, compose_grid, resolve_methods, run_benchmark
from usdespeckle.cli import main

METHODS = ["median", "tv"]
SETS = ["rayleigh_mild", "rayleigh_strong", "phantom"]
SMALL = {"limit": 2, "image_size": 96, "progress": False, "time_repeats": 1, "figure_rows": 2}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    result = run_benchmark(METHODS, SETS, data_dir=None, out_dir=out, seed=7, **SMALL)
    return result, out


def test_report_has_every_method_and_set(small_run):
    result, out = small_run
    report = (out / "benchmark.md").read_text()
    for set_name in SETS:
        assert f"## {set_name}:" in report
        assert result["sets"][set_name]["n"] == 2
        assert list(result["sets"][set_name]["metrics"]) == [INPUT, *METHODS]
    # one table row per method per set, plus one timing row per method
    for method in METHODS:
        assert report.count(f"| {method} | ") == len(SETS) + 1
    assert report.count(f"| {INPUT} | ") == len(SETS)
    assert "FALLBACK" in report  # no --data: scikit-image photographs, and the report says so
    assert "seed: 7" in report and "numpy" in report and result["meta"]["command"] in report
    assert set(result["timing_ms"]) == set(METHODS)
    assert all(t["median_ms"] > 0 for t in result["timing_ms"].values())
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["sets"]["phantom"]["metrics"]["tv"]["enl"]["values"] == pytest.approx(
        result["sets"]["phantom"]["metrics"]["tv"]["enl"]["values"]
    )


def test_figures_are_grids_of_input_methods_reference(small_run):
    result, out = small_run
    for set_name in SETS:
        path = out / result["sets"][set_name]["figure"]
        with Image.open(path) as img:
            grid = np.asarray(img)
        assert grid.dtype == np.uint8 and grid.ndim == 2
        columns = 1 + len(METHODS) + 1  # input, each method, reference
        assert grid.shape[1] > columns * 64 and grid.shape[0] > 2 * 64
        assert grid.std() > 10  # images, not a blank canvas


def test_filters_beat_the_input(small_run):
    result, _ = small_run
    for set_name in ("rayleigh_mild", "rayleigh_strong"):
        table = result["sets"][set_name]["metrics"]
        for method in METHODS:
            assert table[method]["psnr_affine"]["mean"] > table[INPUT]["psnr_affine"]["mean"] + 0.5
            assert table[method]["ssim_affine"]["mean"] > table[INPUT]["ssim_affine"]["mean"]
    phantom = result["sets"]["phantom"]["metrics"]
    for method in METHODS:  # smoothing raises the background's equivalent number of looks
        assert phantom[method]["enl"]["mean"] > phantom[INPUT]["enl"]["mean"]


def test_same_seed_same_numbers_other_seed_other_numbers(small_run, tmp_path):
    result, _ = small_run
    again = run_benchmark(
        METHODS, ["rayleigh_strong", "phantom"], data_dir=None, out_dir=tmp_path, seed=7, **SMALL
    )
    other = run_benchmark(["median"], ["rayleigh_strong"], data_dir=None, out_dir=tmp_path, seed=8, **SMALL)
    for set_name in ("rayleigh_strong", "phantom"):
        for method in [INPUT, *METHODS]:
            for metric, summary in result["sets"][set_name]["metrics"][method].items():
                assert again["sets"][set_name]["metrics"][method][metric]["values"] == summary["values"]
    first = result["sets"]["rayleigh_strong"]["metrics"]["median"]["psnr"]["values"]
    assert other["sets"]["rayleigh_strong"]["metrics"]["median"]["psnr"]["values"] != first


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)).save(path)


def test_prepared_data_is_used(tmp_path, rng):
    data = tmp_path / "data"
    yy, xx = np.mgrid[:64, :64] / 63.0
    for i in range(3):
        _write_png(data / "natural" / f"n{i}.png", (xx + yy * i) / (1 + i))
        _write_png(data / "mri" / f"m{i}.png", yy ** (i + 1))
        _write_png(data / "bmode_mri" / f"m{i}.png", rng.uniform(size=(64, 64)))
    (data / "datalist_natural.json").write_text(
        json.dumps({"training": [], "test": [{"label": f"natural/n{i}.png"} for i in range(3)]})
    )
    (data / "datalist_mri_pairs.json").write_text(
        json.dumps({"test": [{"image": f"bmode_mri/m{i}.png", "label": f"mri/m{i}.png"} for i in range(3)]})
    )
    result = run_benchmark(
        ["median"],
        ["rayleigh_mild", "mri_sim", "mri_extra_sim"],
        data_dir=data,
        out_dir=tmp_path / "out",
        seed=0,
        **{**SMALL, "image_size": 64},  # the size of the images written above
    )
    assert result["sets"]["rayleigh_mild"]["cases"] == ["n0", "n2"]  # --limit 2, spread over the split
    assert "FALLBACK" not in " ".join(result["sets"]["rayleigh_mild"]["notes"])
    assert result["sets"]["mri_sim"]["n"] == 2
    # the input row of mri_sim compares the stored B-mode with the stored MRI slice
    noisy = np.asarray(Image.open(data / "bmode_mri" / "m0.png"), dtype=np.float64) / 255
    clean = np.asarray(Image.open(data / "mri" / "m0.png"), dtype=np.float64) / 255
    expected = 10 * np.log10(1 / np.mean((noisy - clean) ** 2))
    assert result["sets"]["mri_sim"]["metrics"][INPUT]["psnr"]["values"][0] == pytest.approx(
        expected, abs=0.01
    )
    assert result["sets"]["mri_extra_sim"]["n"] == 0
    assert "SKIPPED" in (tmp_path / "out" / "benchmark.md").read_text()


def test_unknown_names_and_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'nope'.*median"):
        run_benchmark(["nope"], ["phantom"], data_dir=None, out_dir=tmp_path, limit=1, seed=0)
    with pytest.raises(ValueError, match="unknown test set 'nope'.*phantom"):
        run_benchmark(["median"], ["nope"], data_dir=None, out_dir=tmp_path, limit=1, seed=0)
    with pytest.raises(ValueError, match="limit must be a positive"):
        run_benchmark(["median"], ["phantom"], data_dir=None, out_dir=tmp_path, limit=0, seed=0)
    with pytest.raises(FileNotFoundError, match="prepare-data"):
        run_benchmark(
            ["median"], ["phantom"], data_dir=tmp_path / "missing", out_dir=tmp_path, limit=1, seed=0
        )


def test_cli_reports_errors_and_writes_report(tmp_path, capsys):
    assert main(["benchmark", "--methods", "nope", "--out", str(tmp_path)]) == 1
    assert "unknown method 'nope'" in capsys.readouterr().err
    args = ["benchmark", "--methods", "median", "--sets", "rayleigh_strong", "--limit", "1", "--size", "64"]
    assert main([*args, "--repeats", "1", "--no-progress", "--out", str(tmp_path)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "benchmark.md").is_file() and (tmp_path / "figures" / "rayleigh_strong.png").is_file()


def test_denoiser_without_weights_is_skipped_with_reason(monkeypatch):
    monkeypatch.setattr(benchmark, "_denoiser_method", lambda: (None, "no trained weights at x/model.ts"))
    chosen, skipped = resolve_methods(["median", "denoiser"])
    assert list(chosen) == ["median"]
    assert "weights" in skipped["denoiser"]


def test_registered_method_runs_like_any_other(monkeypatch, tmp_path):
    monkeypatch.setitem(benchmark._EXTRA_METHODS, "half", benchmark.Method("half", lambda im: im * 0.5))
    result = run_benchmark(["half"], ["rayleigh_strong"], data_dir=None, out_dir=tmp_path, seed=0, **SMALL)
    table = result["sets"]["rayleigh_strong"]["metrics"]
    # an affine fit undoes a gain: the affine-fitted PSNR of half the input equals the input's
    assert table["half"]["psnr_affine"]["values"] == pytest.approx(
        table[INPUT]["psnr_affine"]["values"], abs=1e-3
    )


def test_compose_grid_places_tiles_and_checks_shapes():
    black, white = np.zeros((8, 10)), np.ones((8, 10))
    grid = compose_grid([[black, white], [white, black]], ["a", "b"], gap=2, label_height=12)
    assert grid.shape == (12 + 2 * (8 + 2), 2 * (10 + 2))
    assert (grid[12:20, 0:10] == 0).all() and (grid[12:20, 12:22] == 255).all()
    assert (grid[22:30, 0:10] == 255).all() and (grid[22:30, 12:22] == 0).all()
    with pytest.raises(ValueError, match="column labels"):
        compose_grid([[black, white]], ["a"])
    with pytest.raises(ValueError, match="one shape"):
        compose_grid([[black, np.zeros((4, 4))]], ["a", "b"])


def test_shipped_denoiser_runs_as_a_method(monkeypatch, tmp_path):
    """A bundle with weights makes ``denoiser`` available; here a TorchScript 5x5 mean filter stands in."""
    import hashlib

    import torch

    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    (bundle / "configs").mkdir()
    smoother = torch.nn.AvgPool2d(5, stride=1, padding=2, count_include_pad=False)
    torch.jit.script(smoother).save(str(bundle / "models" / "model.ts"))
    digest = hashlib.sha256((bundle / "models" / "model.ts").read_bytes()).hexdigest()
    metadata = {
        "weights_sha256": {"models/model.ts": digest},
        "network_data_format": {"inputs": {"image": {"spatial_shape": ["16*n", "16*n"]}}},
    }
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    monkeypatch.setenv("USDESPECKLE_BUNDLE", str(bundle))

    chosen, skipped = resolve_methods(None)
    assert "denoiser" in chosen and "denoiser" not in skipped
    result = run_benchmark(
        ["denoiser"], ["rayleigh_mild"], data_dir=None, out_dir=tmp_path / "out", seed=0, **SMALL
    )
    table = result["sets"]["rayleigh_mild"]["metrics"]
    assert table["denoiser"]["psnr_affine"]["mean"] > table[INPUT]["psnr_affine"]["mean"] + 0.5
    assert "denoiser" in result["timing_ms"]
