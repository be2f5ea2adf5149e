"""The benchmark: report and figures are written, filters beat the input, runs are repeatable."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from usdespeckle import benchmark
from usdespeckle.benchmark import INPUT, compose_grid, resolve_methods, run_benchmark
from usdespeckle.benchmark.tuning import TunedSettings
from usdespeckle.cli import main

METHODS = ["median", "tv"]
SETS = ["rayleigh_mild", "rayleigh_strong", "phantom"]
# TunedSettings(): every filter at its defaults, whatever tuned_settings.json holds (tested in
# test_benchmark_tuning.py).
SMALL = {
    "limit": 2,
    "image_size": 96,
    "progress": False,
    "time_repeats": 1,
    "figure_rows": 2,
    "tuned_settings": TunedSettings(),
}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    result = run_benchmark(METHODS, SETS, data_dir=None, out_dir=out, seed=7, **SMALL)
    return result, out


def test_report_has_every_method_and_set(small_run):
    result, out = small_run
    report = (out / "benchmark.md").read_text(encoding="utf-8")
    for set_name in SETS:
        assert f"## {set_name}:" in report
        assert result["sets"][set_name]["n"] == 2
        assert list(result["sets"][set_name]["metrics"]) == [INPUT, *METHODS]
    # one table row per method per set, plus one timing row per method
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    for method in METHODS:
        assert sum(line.startswith(f"| {method} | ") for line in rows) == len(SETS) + 1
    assert sum(line.startswith(f"| {INPUT} | ") for line in rows) == len(SETS)
    assert "FALLBACK" in report  # no --data: scikit-image photographs, and the report says so
    assert "seed: 7" in report
    assert "numpy" in report
    assert result["meta"]["command"] in report
    assert set(result["timing_ms"]) == set(METHODS)
    assert all(t["median_ms"] > 0 for t in result["timing_ms"].values())
    saved = json.loads((out / "benchmark.json").read_text(encoding="utf-8"))
    assert saved["sets"]["phantom"]["metrics"]["tv"]["enl"]["values"] == pytest.approx(
        result["sets"]["phantom"]["metrics"]["tv"]["enl"]["values"]
    )


def test_figures_are_grids_of_input_methods_reference(small_run):
    result, out = small_run
    for set_name in SETS:
        path = out / result["sets"][set_name]["figure"]
        with Image.open(path) as img:
            grid = np.asarray(img)
        assert grid.dtype == np.uint8
        assert grid.ndim == 2
        columns = 1 + len(METHODS) + 1  # input, each method, reference
        assert grid.shape[1] > columns * 64
        assert grid.shape[0] > 2 * 64
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
    assert "SKIPPED" in (tmp_path / "out" / "benchmark.md").read_text(encoding="utf-8")


def test_unknown_names_and_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown method 'nope'.*median"):
        run_benchmark(["nope"], ["phantom"], data_dir=None, out_dir=tmp_path, limit=1, seed=0)
    with pytest.raises(ValueError, match=r"unknown test set 'nope'.*phantom"):
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
    assert (tmp_path / "benchmark.md").is_file()
    assert (tmp_path / "figures" / "rayleigh_strong.png").is_file()


def test_denoiser_without_weights_is_skipped_with_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("USDESPECKLE_BUNDLE", str(tmp_path))  # a bundle folder with no weights
    chosen, skipped = resolve_methods(["median", "denoiser"])
    assert list(chosen) == ["median"]
    assert str(tmp_path / "models") in skipped["denoiser"]  # the loader's own message: where it looked


def test_registered_method_runs_like_any_other(monkeypatch, tmp_path):
    monkeypatch.setitem(
        benchmark.methods._EXTRA_METHODS, "half", benchmark.Method("half", lambda im: im * 0.5)
    )
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
    assert (grid[12:20, 0:10] == 0).all()
    assert (grid[12:20, 12:22] == 255).all()
    assert (grid[22:30, 0:10] == 255).all()
    assert (grid[22:30, 12:22] == 0).all()
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
    assert "denoiser" in chosen
    assert "denoiser" not in skipped
    result = run_benchmark(
        ["denoiser"], ["rayleigh_mild"], data_dir=None, out_dir=tmp_path / "out", seed=0, **SMALL
    )
    table = result["sets"]["rayleigh_mild"]["metrics"]
    assert table["denoiser"]["psnr_affine"]["mean"] > table[INPUT]["psnr_affine"]["mean"] + 0.5
    assert "denoiser" in result["timing_ms"]


# --------------------------------------------------------------------------------------------------
# Real B-mode sets (a small stand-in for the prepared real_bmode dataset)
# --------------------------------------------------------------------------------------------------
def _fake_scan(rng: np.random.Generator, shape: tuple[int, int], shift: int) -> tuple[np.ndarray, np.ndarray]:
    """A sector-shaped field of log-compressed speckle over a dark chamber and a bright wall."""
    from scipy import ndimage

    rows, cols = np.mgrid[: shape[0], : shape[1]]
    centre = shape[1] / 2
    field = (np.abs(cols - centre) < 0.2 * shape[1] + 0.35 * rows) & (rows > 2)
    echogenicity = np.full(shape, 0.3)
    echogenicity[((rows - 40) ** 2 + (cols - centre - shift) ** 2) < 12**2] = 0.02  # chamber
    echogenicity[(rows > 60) & (rows < 66)] = 1.0  # wall
    speckle = ndimage.gaussian_filter(rng.normal(size=shape) + 1j * rng.normal(size=shape), 1.0)
    envelope = echogenicity * np.abs(speckle) / np.sqrt(np.mean(np.abs(speckle) ** 2))
    display = np.clip(1 + 20 * np.log10(np.maximum(envelope, 1e-6)) / 40, 0, 1)
    return np.where(field, display, 0.0), field


@pytest.fixture(scope="module")
def real_data(tmp_path_factory) -> Path:
    """datalist_real_bmode.json with 5 held-out cine frames and 2 frames of another scan."""
    data = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(5)
    regions = {"dark": [34, 34, 46, 46], "bright": [61, 30, 65, 50], "homogeneous": [[10, 30, 26, 50]]}
    test, cine = [], []
    for source, frames in (("pydicom-data:cine.dcm", range(20, 25)), ("pydicom-data:other.dcm", range(2))):
        for frame in frames:
            image, field = _fake_scan(rng, (80, 80), shift=frame - 20 if "cine" in source else 0)
            stem = f"{source.split(':')[1].split('.')[0]}_{frame:03d}"
            _write_png(data / "real_bmode" / f"{stem}.png", image)
            _write_png(data / "real_bmode" / f"{stem}_mask.png", field.astype(float))
            item = {
                "image": f"real_bmode/{stem}.png",
                "mask": f"real_bmode/{stem}_mask.png",
                "source": source,
                "frame": frame,
                "regions": regions,
            }
            test.append(item)
            if "cine" in source:
                cine.append(item)
    datalist = {
        "training": [],
        "validation": [],
        "test": test,
        "cine_test": cine[::-1],
    }  # unordered on purpose
    (data / "datalist_real_bmode.json").write_text(json.dumps(datalist))
    return data


@pytest.fixture(scope="module")
def real_run(real_data, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("real_out")
    result = run_benchmark(
        ["median", "tv"], ["real"], data_dir=real_data, out_dir=out, seed=0, **{**SMALL, "limit": 3}
    )
    return result, out


def test_real_sets_score_inside_the_field_against_the_input(real_run):
    result, out = real_run
    real = result["sets"]["real_bmode"]
    # limit 3 taken in turn from each scan: both scans appear
    assert real["n"] == 3
    assert {c.split("_")[0] for c in real["cases"]} == {"cine", "other"}
    table = real["metrics"]
    assert table[INPUT]["fidelity_corr"]["mean"] == pytest.approx(1.0)
    assert table[INPUT]["ratio_m"]["mean"] == np.inf  # the identity leaves no speckle in the residual
    for method in ("median", "tv"):
        assert 0.9 < table[method]["fidelity_corr"]["mean"] < 1.0
        assert table[method]["enl"]["mean"] > table[INPUT]["enl"]["mean"]  # smoother homogeneous box
        assert np.isfinite(table[method]["ratio_m"]["mean"])
        assert 0.0 <= table[method]["gcnr"]["mean"] <= 1.0
    cine = result["sets"]["cine"]
    assert cine["n"] == 3
    assert cine["cases"] == ["frames_021-023"]
    assert cine["metrics"][INPUT]["flicker"]["mean"] == pytest.approx(1.0)
    assert cine["metrics"]["median"]["flicker"]["mean"] < 1.0  # smoothing calms the frame-to-frame speckle
    report = (out / "benchmark.md").read_text(encoding="utf-8")
    assert "## real_bmode:" in report
    assert "## cine:" in report
    assert "fidelity corr." in report
    for figure in real["figures"] + cine["figures"]:
        with Image.open(out / figure) as img:
            assert np.asarray(img).std() > 10
    assert len(real["figures"]) == 2  # one figure per shown frame, input and every method


def test_summary_names_the_strongest_classical_method(real_run):
    result, out = real_run
    rows = {(r["set"], r["metric"]): r for r in result["summary"]}
    table = result["sets"]["real_bmode"]["metrics"]
    row = rows[("real_bmode", "ratio_m")]  # lower is better
    best = min(("median", "tv"), key=lambda m: table[m]["ratio_m"]["mean"])
    assert row["classical"] == best
    assert row["classical_value"] == table[best]["ratio_m"]["mean"]
    row = rows[("real_bmode", "fidelity_corr")]  # higher is better
    assert row["classical"] == max(("median", "tv"), key=lambda m: table[m]["fidelity_corr"]["mean"])
    assert np.isnan(row["denoiser"])  # not run here
    cine_row = rows[("cine", "flicker")]
    assert cine_row["input"] == pytest.approx(1.0)
    assert rows[("real_bmode", "ratio_m")]["input"] == math.inf  # the input's residual is zero
    report = (out / "benchmark.md").read_text(encoding="utf-8")
    line = next(x for x in report.splitlines() if x.startswith("| real_bmode | M "))
    cells = [c.strip() for c in line.strip("|").split("|")]
    ratio = rows[("real_bmode", "ratio_m")]
    assert cells[2] == "∞"
    value, name = cells[3].split()
    assert name == f"({ratio['classical']})"
    assert float(value) == pytest.approx(ratio["classical_value"], abs=1e-3)


def test_real_sets_without_data_are_skipped_with_a_note(tmp_path):
    result = run_benchmark(["median"], ["real_bmode", "cine"], data_dir=None, out_dir=tmp_path, **SMALL)
    for name in ("real_bmode", "cine"):
        assert result["sets"][name]["n"] == 0
        assert "prepare-data" in result["sets"][name]["notes"][0]


def test_new_synthetic_sets_have_references_and_groups_expand(tmp_path):
    assert benchmark.resolve_sets(["gamma_looks", "correlated"]) == [
        "gamma_looks_1",
        "gamma_looks_4",
        "correlated",
    ]
    result = run_benchmark(
        ["median"], ["gamma_looks", "correlated"], data_dir=None, out_dir=tmp_path, seed=3, **SMALL
    )
    one, four = (result["sets"][f"gamma_looks_{n}"]["metrics"][INPUT]["psnr"]["mean"] for n in (1, 4))
    assert four > one + 3  # four looks are much less noisy than one
    correlated = result["sets"]["correlated"]["metrics"]
    assert correlated["median"]["psnr_affine"]["mean"] > correlated[INPUT]["psnr_affine"]["mean"] + 1
    assert "PSF-correlated" in (tmp_path / "benchmark.md").read_text(encoding="utf-8")


def test_default_limits_subsample_and_the_report_says_so(tmp_path):
    result = run_benchmark(
        ["median"], ["rayleigh_mild"], data_dir=None, out_dir=tmp_path, **{**SMALL, "limit": None}
    )
    assert result["sets"]["rayleigh_mild"]["n"] == benchmark.SETS["rayleigh_mild"].default_limit
    assert "Subsampled" in (tmp_path / "benchmark.md").read_text(encoding="utf-8")


def test_demo_real_writes_input_classical_and_method(real_data, tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--real", "--data", str(real_data), "--method", "median", "--classical", "tv"]
    assert main([*args, "--frames", "3", "--out", str(out)]) == 0
    import SimpleITK as sitk

    frames = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "input.nii.gz")))
    output = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "output.nii.gz")))
    assert frames.shape == output.shape == (3, 80, 80)
    assert output.std() < frames.std()
    assert (out / "classical.nii.gz").is_file()
    with Image.open(out / "side_by_side.png") as img:
        png = np.asarray(img)
    assert png.shape[1] > 3 * 80
    assert png.std() > 10
    assert "held-out real frames" in capsys.readouterr().out
    assert main(["demo", "--real", "--data", str(tmp_path), "--out", str(out)]) == 1
    assert "prepare-data" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_real_reads_the_held_out_cine_from_pydicom_data():
    from usdespeckle.commands.demo import held_out_cine_frames
    from usdespeckle.data.real_bmode import CINE_BLOCKS

    frames, field, origin = held_out_cine_frames(None, 2)
    assert frames.shape[0] == 2
    assert frames.shape[1:] == field.shape
    assert field.mean() > 0.3
    first, stop = CINE_BLOCKS["test"]
    held_out = [int(n) for n in origin.rsplit(" ", 1)[-1].split("-")]
    assert first <= held_out[0] < held_out[1] < stop  # test frames only
    assert (frames[:, ~field] == 0).all()
    assert frames[:, field].std() > 0.05
