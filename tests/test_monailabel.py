"""The MONAI Label app, end to end: a real server on 127.0.0.1 in its own environment.

The server runs from ``.venv-monailabel`` (built by ``training/setup_monailabel_env.sh``), with a
tiny TorchScript denoiser and simulator built in a temporary folder (``tests/monailabel``). Results
are compared with local inference in this interpreter on the same models. Only loopback traffic;
every request loop is bounded; the server's process group is killed at the end.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("MONAILABEL_VENV", ROOT / ".venv-monailabel"))
SETUP = ROOT / "training" / "setup_monailabel_env.sh"
START_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 120
# pip's words when a registry cannot be reached (the only reason to skip rather than fail)
_OFFLINE = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Max retries",
)


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


from usdespeckle import client  # noqa: E402  (the same client the CLI and Slicer use)

tiny_bundle = _load("usdespeckle_tiny_bundle", ROOT / "tests" / "monailabel" / "tiny_bundle.py")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _volume(rng: np.random.Generator, shape=(10, 32, 48)) -> sitk.Image:
    """A speckled volume (Rayleigh) with non-trivial spacing, origin and an oblique direction."""
    array = (rng.rayleigh(1.0, size=shape) * 60.0).astype(np.float32)
    array[:, 8:20, 10:30] *= 2.0  # a brighter region, so the image has structure
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.3, 0.2, 1.5))
    image.SetOrigin((12.5, -4.0, 30.0))
    c, s = np.cos(0.3), np.sin(0.3)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0))
    return image


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Build the environment if needed, start the server, yield its URL and folders, kill it."""
    setup = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=45 * 60)
    if setup.returncode != 0:
        output = setup.stdout + setup.stderr
        if any(word in output for word in _OFFLINE):
            pytest.skip(f"package registry unreachable, cannot build {VENV}: {output.strip()[-300:]}")
        pytest.fail(f"setup_monailabel_env.sh failed ({setup.returncode}):\n{output[-3000:]}")

    work = tmp_path_factory.mktemp("monailabel")
    bundle = tiny_bundle.make_tiny_bundle(work / "bundle")
    studies = work / "studies"
    studies.mkdir()
    stored = _volume(np.random.default_rng(7))
    sitk.WriteImage(stored, str(studies / "stored_volume.nii.gz"))
    # a copy of the app, so the server's logs/ and model/ folders stay out of the checkout
    app = work / "app"
    subprocess.run(["cp", "-r", str(ROOT / "monailabel_app"), str(app)], check=True)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, OMP_NUM_THREADS="2", MONAI_LABEL_DATASTORE_AUTO_RELOAD="false")
    log = open(work / "server.log", "w")  # noqa: SIM115 (closed in the finaliser)
    command = [
        str(VENV / "bin" / "python"), "-m", "monailabel.main", "start_server",
        "--app", str(app), "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port),
        "--conf", "bundle", str(bundle), "--conf", "threads", "2", "--conf", "sam2", "false",
    ]  # fmt: skip
    # cwd outside the checkout: `python -m` puts the cwd first on sys.path
    process = subprocess.Popen(
        command, cwd=work, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"server exited with {process.returncode}:\n{(work / 'server.log').read_text()[-3000:]}"
                )
            try:
                if _get(url + "/info/")[0] == 200:
                    break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no /info/ after {START_TIMEOUT_S} s:\n{(work / 'server.log').read_text()[-3000:]}"
                )
            time.sleep(1.0)
        yield {"url": url, "bundle": bundle, "work": work, "stored": stored, "process": process}
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def local(server):
    """Local despeckling in this interpreter with the server's tiny bundle."""
    from usdespeckle.inference import despeckle_image

    def run(image: sitk.Image, **kwargs) -> sitk.Image:
        return despeckle_image(image, "denoiser", bundle_root=server["bundle"], **kwargs)

    return run


@pytest.mark.slow
def test_info_lists_both_tasks(server):
    info = client.server_info(server["url"])
    assert {"despeckle", "simulate"} <= set(info["models"])
    assert info["models"]["simulate"]["simulator"]["available"] is True
    assert info["datastore"]["total"] == 1  # the stored volume


@pytest.mark.slow
@pytest.mark.parametrize("params", [{}, {"axis": 1, "strength": 0.5, "batch_size": 3, "passes": 1}])
def test_despeckle_upload_matches_local_inference(server, local, tmp_path, params):
    image = _volume(np.random.default_rng(1))
    sitk.WriteImage(image, str(tmp_path / "in.nii.gz"))
    answer = client.despeckle_via_server(
        server["url"], tmp_path / "in.nii.gz", tmp_path / "out.nii.gz", **params
    )
    assert answer["bytes"] > 0
    result = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    assert result.GetPixelID() == sitk.sitkFloat32  # an image, not a uint8 label map
    _assert_same_geometry(result, image)
    expected = sitk.GetArrayFromImage(local(sitk.ReadImage(str(tmp_path / "in.nii.gz")), **params))
    got = sitk.GetArrayFromImage(result)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4 * float(np.ptp(expected)))
    # the tiny denoiser changes the image (so the comparison above is not input == input)
    assert np.abs(got - sitk.GetArrayFromImage(image)).mean() > 0.01 * float(np.ptp(got))


@pytest.mark.slow
def test_despeckle_stored_image_by_id(server, local, tmp_path):
    url = f"{server['url']}/infer/despeckle?image=stored_volume&output=image"
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        (tmp_path / "out.nii.gz").write_bytes(response.read())
    result = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    _assert_same_geometry(result, server["stored"])
    expected = sitk.GetArrayFromImage(local(server["stored"]))
    np.testing.assert_allclose(sitk.GetArrayFromImage(result), expected, rtol=1e-5, atol=1e-3)


@pytest.mark.slow
def test_simulate_matches_low_level_map_and_simulator(server, tmp_path):
    import torch

    from usdespeckle.lowlevel import low_level_map

    rng = np.random.default_rng(2)
    mri = np.zeros((3, 32, 48), np.float32)
    mri[:, 6:26, 8:40] = 120.0
    mri[:, 12:20, 16:30] = 220.0
    mri += rng.normal(0.0, 5.0, mri.shape).astype(np.float32)
    image = sitk.GetImageFromArray(mri)
    image.SetSpacing((1.0, 1.0, 2.0))
    image.SetOrigin((-5.0, 2.0, 7.0))
    sitk.WriteImage(image, str(tmp_path / "mri.nii.gz"))
    client.infer_via_server(server["url"], "simulate", tmp_path / "mri.nii.gz", tmp_path / "bmode.nii.gz")
    result = sitk.ReadImage(str(tmp_path / "bmode.nii.gz"))
    _assert_same_geometry(result, image)
    got = sitk.GetArrayFromImage(result)
    # sides are multiples of the tiny simulator's divisor (16): no padding, so a direct reference
    simulator = torch.jit.load(str(server["bundle"] / "models" / "simulator.ts"))
    maps = np.stack([low_level_map(s) for s in mri])[:, np.newaxis]
    with torch.inference_mode():
        expected = simulator(torch.from_numpy(maps)).numpy()[:, 0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert got.min() >= 0.0 and got.max() <= 1.0


@pytest.mark.slow
def test_twenty_concurrent_requests_all_succeed(server, local, tmp_path):
    image = _volume(np.random.default_rng(3), shape=(2, 32, 32))
    sitk.WriteImage(image, str(tmp_path / "in.nii.gz"))
    expected = sitk.GetArrayFromImage(local(sitk.ReadImage(str(tmp_path / "in.nii.gz"))))

    def one(i: int) -> np.ndarray:
        out = tmp_path / f"out{i}.nii.gz"
        client.despeckle_via_server(server["url"], tmp_path / "in.nii.gz", out, timeout=REQUEST_TIMEOUT_S)
        return sitk.GetArrayFromImage(sitk.ReadImage(str(out)))

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20), timeout=5 * REQUEST_TIMEOUT_S))
    assert len(results) == 20
    for got in results:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4 * float(np.ptp(expected)))


def _nifti_4d(path: Path) -> None:
    import nibabel as nib

    data = np.random.default_rng(4).random((32, 32, 4, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def _nan_volume(path: Path) -> None:
    array = np.random.default_rng(5).random((3, 32, 32)).astype(np.float32)
    array[1, 5, 5] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "make", "params", "words"),
    [
        ("junk.nii.gz", lambda p: p.write_bytes(b"this is not an image"), {}, "cannot be read"),
        ("four_d.nii.gz", _nifti_4d, {}, "4D"),
        # ITK's NIfTI reader drops NaN (SimpleITK 2.5.7), so the NaN upload is NRRD
        ("nan.nrrd", _nan_volume, {}, "NaN"),
        ("nan.nrrd", _nan_volume, {"strength": 2}, "strength"),
        ("nan.nrrd", _nan_volume, {"passes": 3}, "passes"),
    ],
)
def test_bad_input_gets_4xx_with_message_and_server_keeps_serving(
    server, tmp_path, name, make, params, words
):
    make(tmp_path / name)
    with pytest.raises(client.ServerError) as err:
        client.despeckle_via_server(server["url"], tmp_path / name, tmp_path / "out.nii.gz", **params)
    assert 400 <= err.value.status < 500, err.value
    assert words in err.value.detail
    assert str(tmp_path) not in err.value.detail  # no server-side paths leak
    assert not (tmp_path / "out.nii.gz").exists()
    assert server["process"].poll() is None
    assert _get(server["url"] + "/info/")[0] == 200


def test_client_reports_unreachable_server_and_refuses_overwrite(tmp_path):
    image = tmp_path / "in.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((16, 16), np.float32)), str(image))
    port = _free_port()  # nothing listens there
    with pytest.raises(client.ServerError) as err:
        client.despeckle_via_server(f"http://127.0.0.1:{port}", image, tmp_path / "out.nii.gz", timeout=5)
    assert err.value.status == 0 and "cannot reach" in err.value.detail
    (tmp_path / "exists.nii.gz").write_bytes(b"x")
    with pytest.raises(ValueError, match="exists"):
        client.despeckle_via_server(f"http://127.0.0.1:{port}", image, tmp_path / "exists.nii.gz")
    with pytest.raises(FileNotFoundError):
        client.despeckle_via_server(
            f"http://127.0.0.1:{port}", tmp_path / "missing.nii.gz", tmp_path / "o.nii.gz"
        )


def test_multipart_body_is_well_formed():
    body, content_type = client._multipart({"params": '{"a": 1}'}, {"file": ("x.nii.gz", b"\x00\x01binary")})
    boundary = content_type.split("boundary=")[1]
    assert content_type.startswith("multipart/form-data; boundary=")
    parts = body.split(f"--{boundary}".encode())
    assert parts[-1] == b"--\r\n" and len(parts) == 4  # preamble, two parts, closing
    assert b'name="params"\r\n\r\n{"a": 1}\r\n' in parts[1]
    assert b'filename="x.nii.gz"' in parts[2] and parts[2].endswith(b"\x00\x01binary\r\n")
    assert json.loads(parts[1].split(b"\r\n\r\n")[1].strip()) == {"a": 1}
