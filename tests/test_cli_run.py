"""``usdespeckle run``: end to end on small files, one-line errors and non-zero exits."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from bundles import make_bundle
from test_inference import make_generator_bundle

from usdespeckle.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture
def bundle(tmp_path, monkeypatch):
    root = make_bundle(tmp_path / "bundle", onnx=True)
    monkeypatch.setenv("USDESPECKLE_BUNDLE", str(root))
    return root


@pytest.fixture
def volume_path(tmp_path, rng):
    image = sitk.GetImageFromArray(rng.uniform(0, 255, size=(10, 20, 24)).astype(np.float32))
    image.SetSpacing((0.2, 0.3, 1.0))
    image.SetOrigin((1.0, -2.0, 3.0))
    path = tmp_path / "in.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("usdespeckle run: error: ")
    return err


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_run_volume_lines_progress(tmp_path, bundle, volume_path, capsys, backend):
    out = tmp_path / "out.nrrd"
    code = main(
        ["run", str(volume_path), str(out), "--backend", backend, "--batch", "4", "--progress", "lines"]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["progress: 4/10", "progress: 8/10", "progress: 10/10"]
    src, res = sitk.ReadImage(str(volume_path)), sitk.ReadImage(str(out))
    assert res.GetSpacing() == src.GetSpacing()
    assert res.GetOrigin() == src.GetOrigin()
    assert not np.allclose(sitk.GetArrayFromImage(res), sitk.GetArrayFromImage(src))


def test_run_axis_and_strength_zero(tmp_path, bundle, volume_path):
    out = tmp_path / "same.nii.gz"
    assert (
        main(["run", str(volume_path), str(out), "--axis", "2", "--strength", "0", "--progress", "none"]) == 0
    )
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(out))),
        sitk.GetArrayFromImage(sitk.ReadImage(str(volume_path))),
    )


def test_run_png_to_png(tmp_path, bundle, rng):
    src = tmp_path / "in.png"
    sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 255, size=(40, 50)).astype(np.uint8)), str(src))
    assert main(["run", str(src), str(tmp_path / "out.png")]) == 0
    assert sitk.ReadImage(str(tmp_path / "out.png")).GetPixelID() == sitk.sitkUInt8


def test_errors_are_one_line_and_non_zero(tmp_path, bundle, volume_path, capsys, rng):
    out = tmp_path / "out.nii.gz"
    assert main(["run", str(tmp_path / "missing.nii.gz"), str(out)]) == 1
    assert "no such file" in one_line_error(capsys)

    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"not an image at all" * 10)
    assert main(["run", str(corrupt), str(out)]) == 1
    assert "cannot be read" in one_line_error(capsys)

    four_d = tmp_path / "4d.nii"
    sitk.WriteImage(sitk.GetImageFromArray(rng.uniform(size=(2, 3, 20, 20)), isVector=False), str(four_d))
    assert main(["run", str(four_d), str(out)]) == 1
    assert "4D" in one_line_error(capsys)

    nan = rng.uniform(size=(20, 20))
    nan[0, 0] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "nan.nrrd"))
    assert main(["run", str(tmp_path / "nan.nrrd"), str(out)]) == 1
    assert "NaN" in one_line_error(capsys)

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.uint8)), str(tmp_path / "flat.png"))
    assert main(["run", str(tmp_path / "flat.png"), str(out)]) == 1
    assert "constant" in one_line_error(capsys)

    sitk.WriteImage(
        sitk.GetImageFromArray(np.arange(25, dtype=np.uint8).reshape(5, 5)), str(tmp_path / "tiny.png")
    )
    assert main(["run", str(tmp_path / "tiny.png"), str(out)]) == 1
    assert "too small" in one_line_error(capsys)

    assert main(["run", str(volume_path), str(volume_path), "--force"]) == 1
    assert "is the input" in one_line_error(capsys)

    out.write_bytes(b"old")
    assert main(["run", str(volume_path), str(out), "--progress", "none"]) == 1
    assert "--force" in one_line_error(capsys)
    assert out.read_bytes() == b"old"
    assert main(["run", str(volume_path), str(out), "--progress", "none", "--force"]) == 0

    assert main(["run", str(volume_path), str(tmp_path / "v.png"), "--progress", "none"]) == 1
    assert "3D" in one_line_error(capsys)


def test_passes_option_reaches_the_model(tmp_path, volume_path, capsys, monkeypatch):
    root, _ = make_generator_bundle(tmp_path / "gen")
    monkeypatch.setenv("USDESPECKLE_BUNDLE", str(root))
    results = {}
    for passes in (None, "1", "8"):
        out = tmp_path / f"out_{passes}.nii.gz"
        args = ["run", str(volume_path), str(out), "--progress", "none"]
        assert main(args + (["--passes", passes] if passes else [])) == 0
        results[passes] = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    np.testing.assert_array_equal(results[None], results["1"])  # default: one pass
    assert np.abs(results["1"] - results["8"]).max() > 1e-3
    with pytest.raises(SystemExit):
        main(["run", str(volume_path), str(tmp_path / "z.nii.gz"), "--passes", "3"])


def test_uncertainty_option_writes_the_spread_with_the_input_geometry(
    tmp_path, volume_path, capsys, monkeypatch
):
    root, _ = make_generator_bundle(tmp_path / "gen")
    monkeypatch.setenv("USDESPECKLE_BUNDLE", str(root))
    out, spread_path = tmp_path / "out.nrrd", tmp_path / "spread.nrrd"
    args = ["run", str(volume_path), str(out), "--progress", "none", "--uncertainty", str(spread_path)]
    assert main(args) == 0
    source, spread = sitk.ReadImage(str(volume_path)), sitk.ReadImage(str(spread_path))
    assert spread.GetSize() == source.GetSize()
    assert spread.GetSpacing() == source.GetSpacing()
    assert spread.GetOrigin() == source.GetOrigin()
    assert spread.GetDirection() == source.GetDirection()
    assert sitk.GetArrayFromImage(spread).max() > 0  # a real generator's mirrored passes differ
    plain = tmp_path / "plain.nrrd"
    assert main(["run", str(volume_path), str(plain), "--progress", "none"]) == 0
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(sitk.ReadImage(str(out))), sitk.GetArrayFromImage(sitk.ReadImage(str(plain)))
    )  # the despeckled output does not change
    bad = [
        "run",
        str(volume_path),
        str(tmp_path / "m.nrrd"),
        "--method",
        "median",
        "--uncertainty",
        str(tmp_path / "u.nrrd"),
    ]
    assert main(bad) != 0
    assert "needs the denoiser" in one_line_error(capsys)
    assert not (tmp_path / "m.nrrd").exists()


def test_missing_weights_error_says_how_to_train(tmp_path, volume_path, capsys, monkeypatch):
    monkeypatch.setenv("USDESPECKLE_BUNDLE", str(tmp_path / "empty"))
    assert main(["run", str(volume_path), str(tmp_path / "o.nii.gz")]) == 1
    assert "training/" in one_line_error(capsys)


def test_bad_strength_is_a_usage_error(tmp_path, volume_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(volume_path), str(tmp_path / "o.nii.gz"), "--strength", "2"])
    assert exit_info.value.code == 2
    assert "strength" in capsys.readouterr().err


def test_help_names_the_axis_convention():
    out = subprocess.run(
        [sys.executable, "-m", "usdespeckle", "run", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert "GetArrayFromImage" in out.stdout
    assert "--progress" in out.stdout


def test_demo_writes_input_output_and_png(tmp_path, bundle, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    assert "despeckled with denoiser" in capsys.readouterr().out
    before = sitk.ReadImage(str(tmp_path / "demo" / "input.nii.gz"))
    after = sitk.ReadImage(str(tmp_path / "demo" / "output.nii.gz"))
    assert before.GetSize() == after.GetSize()
    assert before.GetDimension() == 3
    assert before.GetSpacing() == after.GetSpacing()
    png = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "demo" / "side_by_side.png")))
    assert png.dtype == np.uint8
    assert png.shape[1] > 2 * before.GetSize()[0]


def test_demo_without_weights_falls_back_with_a_notice(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("USDESPECKLE_BUNDLE", str(tmp_path / "empty"))
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    captured = capsys.readouterr()
    assert "notice: no denoiser weights" in captured.err
    assert "despeckled with median" in captured.out


def test_run_via_unreachable_server_fails_with_one_line(tmp_path, capsys):
    import socket

    import numpy as np
    import SimpleITK as sitk

    from usdespeckle.cli import main

    image = tmp_path / "in.nrrd"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.random.default_rng(0).random((4, 32, 32)).astype(np.float32)), image
    )
    with socket.socket() as s:  # a free loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["run", str(image), str(tmp_path / "out.nrrd"), "--server", f"http://127.0.0.1:{port}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1
    assert err[0].startswith("usdespeckle run: error:")
    assert not (tmp_path / "out.nrrd").exists()


@pytest.mark.slow  # the README's main command with the shipped weights: about 20 s
def test_demo_with_the_shipped_bundle_renders_with_the_simulator(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("USDESPECKLE_BUNDLE", raising=False)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    captured = capsys.readouterr()
    assert "made with the simulator" in captured.out
    assert "despeckled with denoiser" in captured.out
    assert "notice" not in captured.err
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "demo" / "input.nii.gz")))
    after = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "demo" / "output.nii.gz")))
    # despeckling smooths: less pixel-to-pixel variation inside the head than in the input
    head = before > 0.2
    assert (
        np.abs(np.diff(after, axis=2))[head[:, :, 1:]].mean()
        < np.abs(np.diff(before, axis=2))[head[:, :, 1:]].mean()
    )


def test_server_request_leaves_the_auto_backend_to_the_server(tmp_path, volume_path, capsys, monkeypatch):
    """``--backend auto`` names no runtime, so the server uses its own ``--conf backend``; the
    request carries the passes as one int (the default: 1)."""
    from usdespeckle.runtime import client

    sent = []

    def record(url, image_path, out_path, **params):
        sent.append(params)
        raise client.ServerError(0, f"{url} is not running (recorded)")

    monkeypatch.setattr(client, "despeckle_via_server", record)
    args = ["run", str(volume_path), str(tmp_path / "out.nrrd"), "--server", "http://127.0.0.1:9"]
    assert main(args) == 1
    assert "recorded" in one_line_error(capsys)
    assert main([*args, "--backend", "onnx", "--passes", "4"]) == 1
    assert "backend" not in sent[0]
    assert sent[0]["passes"] == 1
    assert sent[1]["backend"] == "onnx"
    assert sent[1]["passes"] == 4


def test_server_run_refuses_uncertainty_before_any_work(tmp_path, volume_path, capsys, monkeypatch):
    """The server answers with one image: --uncertainty with --server is refused, nothing is sent."""
    from usdespeckle.runtime import client

    sent = []
    monkeypatch.setattr(client, "despeckle_via_server", lambda *a, **k: sent.append(k))
    out, spread = tmp_path / "out.nrrd", tmp_path / "spread.nrrd"
    args = ["run", str(volume_path), str(out), "--server", "http://127.0.0.1:9", "--uncertainty", str(spread)]
    assert main(args) == 1
    assert "--uncertainty is computed on this machine only" in one_line_error(capsys)
    assert sent == []
    assert not out.exists()
    assert not spread.exists()


def test_a_missing_optional_package_is_a_one_line_error(tmp_path, volume_path, capsys, monkeypatch):
    """The Slicer runtime has no SciPy: a classical method then names the package to install."""
    for name in [m for m in sys.modules if m.startswith("usdespeckle.runtime.filters")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "scipy", None)  # import scipy fails as if it were not installed
    out = tmp_path / "out.nrrd"
    assert main(["run", str(volume_path), str(out), "--method", "median", "--progress", "none"]) == 1
    assert "needs the Python package scipy" in one_line_error(capsys)
    assert not out.exists()


def test_intensity_range_lets_blocks_of_frames_share_one_mapping(tmp_path, rng, capsys):
    """Two halves run with the whole volume's range give the whole run's result; without it they do not."""
    from usdespeckle.runtime.slicewise import robust_range

    volume = (rng.rayleigh(1.0, (6, 40, 44)) * np.linspace(1.0, 4.0, 6)[:, None, None]).astype(np.float32)
    paths = {}
    for name, part in (("whole", volume), ("first", volume[:3]), ("second", volume[3:])):
        paths[name] = tmp_path / f"{name}.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(part), str(paths[name]))
    low, high = robust_range(volume)

    def run(name: str, *extra: str) -> np.ndarray:
        out = tmp_path / f"{name}_out{len(extra)}.nrrd"
        assert main(["run", str(paths[name]), str(out), "--method", "lee", "--progress", "none", *extra]) == 0
        return sitk.GetArrayFromImage(sitk.ReadImage(str(out)))

    whole = run("whole")
    shared = ["--intensity-range", repr(low), repr(high)]
    np.testing.assert_allclose(
        np.concatenate([run("first", *shared), run("second", *shared)]), whole, atol=1e-5
    )
    alone = np.concatenate([run("first"), run("second")])
    assert np.abs(alone - whole).max() > 1e-3  # each half's own range clips differently
    assert main(["run", str(paths["whole"]), str(tmp_path / "x.nrrd"), "--intensity-range", "2", "1"]) == 1
    assert "LOW < HIGH" in capsys.readouterr().err
