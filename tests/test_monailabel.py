"""The MONAI Label app, end to end: a real server on 127.0.0.1 in its own environment.

The server runs from ``.venv-monailabel`` (built by ``training/setup_monailabel_env.sh``, which
``tests/make_environments.sh`` runs before the tests), with a tiny TorchScript denoiser and
simulator built in a temporary folder (``tests/bundles.py``). Results are compared with local
inference in this interpreter on the same models. Only loopback traffic; every request loop is
bounded; the server's process group is killed at the end.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from bundles import make_server_bundle

from usdespeckle.runtime import client  # the same client the CLI and Slicer use

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("MONAILABEL_VENV", ROOT / ".venv-monailabel"))
START_TIMEOUT_S = int(os.environ.get("MONAILABEL_START_TIMEOUT_S", "180"))  # a loaded machine needs more
REQUEST_TIMEOUT_S = 120
MAX_UPLOAD_MB = 1  # the test server's limits (--conf max_upload_mb, max_voxels)
MAX_VOXELS = 1_000_000
BODY_TIMEOUT_S = 5  # the test server's --conf body_timeout_s


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
    """Start the server in its environment, yield its URL and folders, kill it."""
    if not (VENV / "bin" / "python").exists():
        pytest.fail(f"{VENV} is missing: build it with `bash tests/make_environments.sh`")

    work = tmp_path_factory.mktemp("monailabel")
    bundle = make_server_bundle(work / "bundle")
    studies = work / "studies"
    studies.mkdir()
    stored = _volume(np.random.default_rng(7))
    sitk.WriteImage(stored, str(studies / "stored_volume.nii.gz"))
    # a copy of the app, so the server's logs/ and model/ folders stay out of the checkout
    app = work / "app"
    subprocess.run(["cp", "-r", str(ROOT / "monailabel_app"), str(app)], check=True)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server_tmp = work / "server_tmp"  # the server's temporary folder: uploads must not stay there
    server_tmp.mkdir()
    env = dict(
        os.environ, OMP_NUM_THREADS="2", MONAI_LABEL_DATASTORE_AUTO_RELOAD="false", TMPDIR=str(server_tmp)
    )
    log = open(work / "server.log", "w")  # noqa: SIM115 (closed in the finaliser)
    command = [
        str(VENV / "bin" / "python"), "-m", "monailabel.main", "start_server",
        "--app", str(app), "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port),
        "--conf", "bundle", str(bundle), "--conf", "threads", "2", "--conf", "sam2", "false",
        "--conf", "max_upload_mb", str(MAX_UPLOAD_MB), "--conf", "max_voxels", str(MAX_VOXELS),
        "--conf", "body_timeout_s", str(BODY_TIMEOUT_S),
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
        yield {
            "url": url,
            "bundle": bundle,
            "work": work,
            "stored": stored,
            "process": process,
            "tmp": server_tmp,
            "studies": studies,
            "app": app,
        }
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
    from usdespeckle.runtime.inference import despeckle_image

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

    from usdespeckle.simulation.lowlevel import low_level_map

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
    assert got.min() >= 0.0
    assert got.max() <= 1.0


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
    assert err.value.status == 0
    assert "cannot reach" in err.value.detail
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
    assert parts[-1] == b"--\r\n"
    assert len(parts) == 4
    assert b'name="params"\r\n\r\n{"a": 1}\r\n' in parts[1]
    assert b'filename="x.nii.gz"' in parts[2]
    assert parts[2].endswith(b"\x00\x01binary\r\n")
    assert json.loads(parts[1].split(b"\r\n\r\n")[1].strip()) == {"a": 1}


def _post(url: str, fields: dict[str, str] | None = None, files: dict | None = None) -> tuple[int, bytes]:
    """POST a multipart form (or an empty body) and return (status, body) without raising."""
    if fields is None and files is None:
        request = urllib.request.Request(url, data=b"", method="POST")
    else:
        body, content_type = client._multipart(fields or {}, files or {})
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": content_type}
        )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _detail(body: bytes) -> str:
    return str(json.loads(body).get("detail"))


def _upload_bytes(rng_seed: int = 11, shape=(2, 32, 32)) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "in.nii.gz"
        sitk.WriteImage(_volume(np.random.default_rng(rng_seed), shape=shape), str(path))
        return path.read_bytes()


def _wait_for_empty(folder: Path, timeout_s: float = 30.0) -> list[str]:
    """The image files left in ``folder`` once the server's background clean-ups have had their chance.

    MONAI Label keeps its logging configuration (a ``.json`` file) there while it runs.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        left = sorted(p.name for p in folder.iterdir() if not p.name.endswith(".json"))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


@pytest.mark.slow
def test_server_reads_no_path_a_client_names(server):
    """Only uploads and datastore ids are images; every other name gets one uniform 404."""
    url = server["url"] + "/infer/despeckle?output=image&image="
    stored_file = server["studies"] / "stored_volume.nii.gz"
    existing = [str(stored_file), str(server["bundle"] / "models" / "model.ts"), "/etc/hostname", "../"]
    missing = [str(server["work"] / "nowhere.nii.gz"), "no_such_id", "../studies/stored_volume"]
    answers = {name: _post(url + urllib.parse.quote(name, safe="")) for name in existing + missing}
    for name, (status, body) in answers.items():
        assert status == 404, (name, status, body[:200])
        detail = _detail(body)
        # the same sentence whether or not the path exists on the server
        assert detail.replace(repr(name[:100]), "X") == _detail(answers["no_such_id"][1]).replace(
            repr("no_such_id"), "X"
        )
    upload = {"file": ("in.nii.gz", _upload_bytes())}
    for params in ({"image": str(stored_file)}, {"image": "stored_volume"}, {"label": "/etc/hostname"}):
        status, body = _post(
            server["url"] + "/infer/despeckle?output=image", {"params": json.dumps(params)}, upload
        )
        assert status == 400, (params, status, body[:200])
        assert "may not set" in _detail(body), (params, status, body[:200])
        status, body = _post(server["url"] + "/infer/despeckle?output=image", {"params": json.dumps(params)})
        assert status == 400, (params, status, body[:200])
    status, _ = _post(server["url"] + "/infer/despeckle?output=image&image=stored_volume")
    assert status == 200  # a datastore id still works


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "fields", "with_file", "status", "words"),
    [
        ("/infer/despeckle?output=image", {"params": "{not json"}, True, 400, "JSON"),
        ("/infer/despeckle?output=image", {"params": "[1, 2]"}, True, 400, "JSON object"),
        ("/infer/despeckle?output=image", {"params": "{}"}, False, 400, "no image"),
        ("/infer/no_such_model?output=image", {"params": "{}"}, True, 404, "no model"),
        ("/infer/despeckle?output=picture", {"params": "{}"}, True, 400, "output"),
        ("/infer/despeckle?output=image&image=stored_volume", {"params": "{}"}, True, 400, "not both"),
        ("/infer/despeckle?output=image&session_id=abc", {"params": "{}"}, True, 400, "session"),
        ("/infer/despeckle?output=image", {"params": '{"method": "nope"}'}, True, 400, "method"),
        ("/infer/despeckle?output=image", {"params": '{"axis": 5}'}, True, 400, "axis"),
    ],
)
def test_bad_requests_get_4xx_not_500(server, path, fields, with_file, status, words):
    files = {"file": ("in.nii.gz", _upload_bytes())} if with_file else None
    got, body = _post(server["url"] + path, fields, files)
    assert got == status, (got, body[:300])
    assert words in _detail(body)
    assert str(server["work"]) not in _detail(body)


def _huge_header_nifti() -> bytes:
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((20000, 20000))
    header.set_data_dtype(np.float32)
    return header.binaryblock + b"\0" * 4


def _truncated_nifti() -> bytes:
    data = _upload_bytes(shape=(4, 32, 32))
    return data[: len(data) // 2]


def _nan_nifti() -> bytes:
    import tempfile

    import nibabel as nib

    array = np.random.default_rng(5).random((32, 32, 3)).astype(np.float32)
    array[4, 4, 1] = np.nan
    with tempfile.TemporaryDirectory() as folder:
        nib.save(nib.Nifti1Image(array, np.eye(4)), f"{folder}/nan.nii.gz")
        return Path(f"{folder}/nan.nii.gz").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "make", "status", "words"),
    [
        ("huge.nii", _huge_header_nifti, 400, "declares"),  # 352 bytes declaring 400 M voxels
        ("truncated.nii.gz", _truncated_nifti, 400, "truncated"),
        ("nan.nii.gz", _nan_nifti, 400, "NaN"),
        ("big.nii", lambda: b"\0" * (MAX_UPLOAD_MB * 1024 * 1024 + 4096), 413, "limit"),
        ("empty.nii.gz", lambda: b"", 400, "empty"),
        ("../../escape.nii.gz", lambda: _upload_bytes(), 200, ""),  # the name is only a suffix hint
    ],
)
def test_uploads_are_limited_and_always_deleted(server, name, make, status, words):
    got, body = _post(
        server["url"] + "/infer/despeckle?output=image", {"params": "{}"}, {"file": (name, make())}
    )
    assert got == status, (got, body[:300])
    if words:
        assert words in _detail(body)
        assert str(server["work"]) not in _detail(body)
    assert _wait_for_empty(server["tmp"]) == []  # no upload or result left in the server's temp folder
    assert server["process"].poll() is None


@pytest.mark.slow
def test_info_answers_while_an_inference_runs(server, tmp_path):
    """Inference runs off the event loop: /info/ answers before a long despeckle finishes."""
    import threading

    rng = np.random.default_rng(8)
    slow = sitk.GetImageFromArray((rng.rayleigh(1.0, size=(40, 128, 128)) * 60).astype(np.uint8))
    sitk.WriteImage(slow, str(tmp_path / "slow.nii.gz"))
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            client.despeckle_via_server(
                server["url"], tmp_path / "slow.nii.gz", tmp_path / "out.nii.gz", method="srad"
            )
            outcome["ok"] = True
        except Exception as err:  # reported by the assertion below
            outcome["error"] = err

    worker = threading.Thread(target=run)
    worker.start()
    log = server["work"] / "server.log"
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    while "infer despeckle on an upload" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    status, _ = _get(server["url"] + "/info/")
    still_running = worker.is_alive()
    worker.join(timeout=5 * REQUEST_TIMEOUT_S)
    assert status == 200
    assert still_running, "the inference ended before /info/ answered: make the test volume larger"
    assert outcome.get("ok"), outcome


def _server_python(server, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in the server's environment with the app's lib/ importable."""
    return subprocess.run(
        [str(VENV / "bin" / "python"), "-c", code],
        cwd=server["app"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=f"{server['app']}:{ROOT}", OMP_NUM_THREADS="1"),
    )


@pytest.mark.slow
def test_simulate_loads_the_shipped_simulator_through_the_library_with_its_checksum(server, tmp_path):
    import shutil

    shipped = ROOT / "monai_bundle"
    copy = tmp_path / "bundle"
    shutil.copytree(shipped / "configs", copy / "configs")
    (copy / "models").mkdir()
    shutil.copy(shipped / "models" / "simulator.pt", copy / "models" / "simulator.pt")
    code = (
        "import sys, torch; from pathlib import Path; from lib.infers.simulate import load_simulator\n"
        "model = load_simulator(Path(sys.argv[1]), 'cpu')\n"
        "out = model(torch.rand(1, 1, model.divisor, model.divisor))\n"
        "print(tuple(out.shape), float(out.min()) >= 0.0, float(out.max()) <= 1.0)\n"
    )
    result = _server_python(server, code.replace("sys.argv[1]", repr(str(copy))))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("True True"), result.stdout
    # a simulator.pt whose sha256 does not match metadata.json is refused
    with open(copy / "models" / "simulator.pt", "ab") as f:
        f.write(b"\0")
    result = _server_python(server, code.replace("sys.argv[1]", repr(str(copy))))
    assert result.returncode != 0, result.stderr[-2000:]
    assert "sha256" in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("out_name", ["out.png", "out.tif", "out.mhd", "out.dcm", "out.nii.gz"])
def test_run_server_writes_the_format_the_output_names(server, local, tmp_path, out_name, capsys):
    """``run --server``: a two-file .mhd input is uploaded as one file; the answer is converted to OUTPUT's format."""
    from usdespeckle.cli import main
    from usdespeckle.runtime.io import read_image, write_image

    rng = np.random.default_rng(9)
    image = sitk.GetImageFromArray((rng.rayleigh(1.0, size=(48, 64)) * 60).astype(np.float32))
    image.SetSpacing((0.3, 0.2))
    sitk.WriteImage(image, str(tmp_path / "in.mhd"))  # in.mhd + in.raw
    out = tmp_path / out_name
    code = main(["run", str(tmp_path / "in.mhd"), str(out), "--server", server["url"], "--progress", "none"])
    assert code == 0, capsys.readouterr().err
    expected = write_image(local(read_image(tmp_path / "in.mhd")), tmp_path / f"expected_{out_name}")
    got, want = sitk.ReadImage(str(out)), sitk.ReadImage(str(expected))
    assert got.GetPixelID() == want.GetPixelID()
    assert got.GetSize() == want.GetSize()
    got_values = sitk.GetArrayFromImage(got).astype(np.float64)
    want_values = sitk.GetArrayFromImage(want).astype(np.float64)
    integer = want.GetPixelID() in (sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkInt16)
    atol = 1.0 if integer else 1e-4 * float(np.ptp(want_values))  # rounding at .5 may differ by one
    np.testing.assert_allclose(got_values, want_values, atol=atol)


# --- what the server exposes: the allow-list, and the attacks it refuses --------------------------

ALLOWED_ROUTES = {("GET", "/info/"), ("POST", "/infer/{model}")}
AUTH_ROUTES = {("GET", "/auth/"), ("POST", "/auth/token"), ("GET", "/auth/token/valid")}

_ROUTE_TABLE = """
import json, sys
from monailabel.config import settings
settings.MONAI_LABEL_APP_DIR, settings.MONAI_LABEL_STUDIES = sys.argv[1], sys.argv[2]
settings.MONAI_LABEL_APP_CONF = {"bundle": sys.argv[3], "sam2": "false"}
from fastapi.testclient import TestClient
from monailabel.app import app
with TestClient(app) as client:  # runs the start-up: the app's on_init_complete
    routes = [[type(r).__name__, getattr(r, "path", None), sorted(getattr(r, "methods", None) or [])]
              for r in app.router.routes]
    answers = {path: client.get(path).status_code for path in ("/info/", "/datastore/", "/openapi.json")}
print(json.dumps({"routes": routes, "answers": answers}))
"""


def _route_table(server, auth: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{server['app']}:{ROOT}", OMP_NUM_THREADS="1",
               MONAI_LABEL_AUTH_ENABLE="true" if auth else "false")  # fmt: skip
    result = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", _ROUTE_TABLE, str(server["app"]), str(server["studies"]),
         str(server["bundle"])],
        cwd=server["work"], capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("auth", [False, True])
def test_the_route_table_holds_only_the_allow_list(server, auth):
    """Every route of the started app, walked: nothing beyond /info/ and the app's /infer (and /auth)."""
    table = _route_table(server, auth)
    found = set()
    for kind, path, methods in table["routes"]:
        assert kind == "APIRoute", (kind, path)  # no mounts, no included-router wrappers
        found |= {(m, path) for m in methods if m != "HEAD"}
    assert found == ALLOWED_ROUTES | (AUTH_ROUTES if auth else set())
    assert table["answers"]["/datastore/"] == 404
    assert table["answers"]["/openapi.json"] == 404
    # with MONAI Label's authentication on, /info/ needs a token
    assert table["answers"]["/info/"] == (401 if auth else 200)


def _request(
    server, method: str, path: str, body: bytes = b"", headers: dict | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(
        server["url"] + path, data=body or None, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _attacks(server) -> list[tuple[str, str, bytes]]:
    """The stock MONAI Label requests that read, wrote or deleted files, started processes or leaked."""
    app_lib = f"../../{server['app'].name}/lib/evil"
    py = b"import os\nos.system('touch /tmp/owned')\n"
    return [
        ("PUT", "/datastore/image?image=../victim", b"x"),
        ("PUT", "/datastore/image?image=" + urllib.parse.quote(app_lib), py),
        ("PUT", "/datastore/label?label=stored_volume&tag=../../x", b"x"),
        ("DELETE", "/datastore/image?id=stored_volume", b""),
        ("DELETE", "/datastore/image?id=../victim", b""),
        ("GET", "/datastore/image/info?image=stored_volume", b""),
        ("GET", "/datastore/?output=all", b""),
        ("GET", "/activelearning/random", b""),
        ("POST", "/activelearning/random", b"{}"),
        ("PUT", "/session/", b"x"),
        ("GET", "/logs/?text=true", b""),
        ("GET", "/train/", b""),
        ("POST", "/train/despeckle", b"{}"),
        ("POST", "/scoring/dice", b"{}"),
        ("GET", "/batch/infer", b""),
        ("POST", "/batch/infer/despeckle", b"{}"),
        ("POST", "/infer/wsi_v2/despeckle?image=/etc/hostname", b"{}"),
        ("POST", "/infer/wsi_v2/despeckle?image=/no/such/file", b"{}"),
        ("GET", "/model/despeckle", b""),
        ("POST", "/reload", b""),
        ("GET", "/", b""),
        ("GET", "/docs", b""),
        ("GET", "/openapi.json", b""),
        ("GET", "/static/favicon.ico", b""),
        ("GET", "/ohif/", b""),
        ("GET", "/proxy/dicom/studies", b""),
        ("GET", "/infer/despeckle", b""),
    ]


@pytest.mark.slow
def test_stock_routes_are_refused_and_touch_nothing(server):
    victim = server["work"] / "victim.nii.gz"
    victim.write_bytes(b"keep me")
    stored = server["studies"] / "stored_volume.nii.gz"
    before_stored = stored.read_bytes()
    app_files = sorted(
        p.relative_to(server["app"]) for p in server["app"].rglob("*") if "logs" not in p.parts
    )
    answers = {}
    for method, path, body in _attacks(server):
        status, text = _request(server, method, path, body)
        answers[(method, path)] = status
        assert str(server["work"]) not in text.decode("utf-8", "replace"), (method, path)
        assert b"Traceback" not in text, (method, path)
    assert {k: v for k, v in answers.items() if v != 404} == {}
    assert victim.read_bytes() == b"keep me"
    assert stored.read_bytes() == before_stored
    after = sorted(p.relative_to(server["app"]) for p in server["app"].rglob("*") if "logs" not in p.parts)
    assert after == app_files  # no code written into the app's folder
    assert _wait_for_empty(server["tmp"]) == []  # no temporary file left by any refused request
    status, body = _get(server["url"] + "/info/")
    assert status == 200
    assert str(server["work"]) not in body.decode()  # /info/ names no server path


@pytest.mark.slow
def test_requests_from_web_pages_are_refused(server):
    status, _ = _request(server, "GET", "/info/", headers={"Origin": "http://evil.example"})
    assert status == 403
    upload = {"file": ("in.nii.gz", _upload_bytes())}
    body, content_type = client._multipart({"params": "{}"}, upload)
    status, _ = _request(server, "POST", "/infer/despeckle?output=image", body,
                         {"Content-Type": content_type, "Origin": "http://evil.example"})  # fmt: skip
    assert status == 403


@pytest.mark.slow
def test_datastore_ids_are_strict(server):
    """Only plain ids name stored images: no path, no '..', nothing hidden; all get the same 404."""
    for bad in ("../studies/stored_volume", "..", ".hidden", "stored_volume/..", "a" * 200, "stored volume"):
        status, body = _post(server["url"] + "/infer/despeckle?output=image&image=" + urllib.parse.quote(bad))
        assert status == 404, (bad, body[:200])
        assert "not in this server's datastore" in _detail(body)


def _detached_nrrd(data_file: str) -> bytes:
    return (
        f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 32 32\nencoding: raw\ndata file: {data_file}\n".encode()
    )


def _detached_mha(data_file: str) -> bytes:
    return (
        "ObjectType = Image\nNDims = 2\nDimSize = 32 32\nElementType = MET_UCHAR\n"
        f"ElementDataFile = {data_file}\n"
    ).encode()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "make", "words"),
    [
        ("a.nrrd", lambda: _detached_nrrd("/etc/passwd"), "data file"),
        ("a.nrrd", lambda: _detached_nrrd("LIST\n/etc/passwd"), "data file"),
        ("a.nrrd", lambda: _detached_nrrd("/etc/pass%d 1 1 1"), "data file"),
        ("a.mha", lambda: _detached_mha("/etc/passwd"), "ElementDataFile"),
        ("a.mhd", lambda: _detached_mha("LOCAL"), "upload must be one file"),
        ("a.nhdr", lambda: _detached_nrrd("a.raw"), "upload must be one file"),
        ("a.nii.gz", lambda: _detached_nrrd("/etc/passwd"), "data file"),  # renamed NRRD
        ("noext", lambda: _upload_bytes(), "upload must be one file"),
    ],
)
def test_uploads_naming_a_server_file_are_refused(server, name, make, words):
    got, body = _post(
        server["url"] + "/infer/despeckle?output=image",
        {"params": '{"strength": 0}'},
        {"file": (name, make())},
    )
    assert got == 400, (got, body[:300])
    detail = _detail(body)
    assert words in detail
    assert "root:" not in body.decode("latin-1")  # nothing of /etc/passwd
    assert str(server["tmp"]) not in detail
    assert _wait_for_empty(server["tmp"]) == []


def _short_dicom() -> bytes:
    import struct
    import tempfile

    array = np.random.default_rng(0).integers(0, 200, (4, 32, 40)).astype(np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        sitk.WriteImage(sitk.GetImageFromArray(array), f"{folder}/v.dcm")
        data = Path(f"{folder}/v.dcm").read_bytes()
    tag = b"\xe0\x7f\x10\x00" + struct.pack("<I", array.size)
    at = data.index(tag)
    return (
        data[:at] + b"\xe0\x7f\x10\x00" + struct.pack("<I", array.size - 18) + data[at + 8 : len(data) - 18]
    )


@pytest.mark.slow
def test_short_dicom_upload_is_refused_not_filled_with_other_requests_memory(server):
    got, body = _post(
        server["url"] + "/infer/despeckle?output=image", {"params": '{"strength": 0}'},
        {"file": ("short.dcm", _short_dicom())},
    )  # fmt: skip
    assert got == 400, (got, body[:300])
    assert "pixel data holds 5,102 bytes where the header declares 5,120" in _detail(body)


@pytest.mark.slow
def test_slow_bodies_are_cut(server):
    """Five connections that send headers and a sliver of body, then stall, get 408 and are closed."""
    head = (
        b"POST /infer/despeckle?output=image HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
    )
    port = int(server["url"].rsplit(":", 1)[1])
    sockets = []
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", port), timeout=10 * BODY_TIMEOUT_S + 60)
        s.sendall(head)
        sockets.append(s)
    for s in sockets:
        received = b""
        while chunk := s.recv(65536):  # ends when the server closes the connection
            received += chunk
        s.close()
        assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert _wait_for_empty(server["tmp"]) == []
    assert _get(server["url"] + "/info/")[0] == 200
