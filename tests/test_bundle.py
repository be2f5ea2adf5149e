"""Tests of the MONAI bundle: tiny trainings through the bundle runner, resume, DDP, inference, exports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from bundles import make_exported_bundle
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from usdespeckle.gan.ensemble import SelfEnsemble
from usdespeckle.gan.networks import Pix2PixUNetGenerator
from usdespeckle.runtime import bundle_utils

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "monai_bundle"
CONFIGS = BUNDLE / "configs"
# the simulator's config: train_simulator.json is an override stacked on train.json
SIMULATOR = ["train.json", "train_simulator.json"]
PYTHON = sys.executable
_TRAIN = json.loads((CONFIGS / "train.json").read_text())
DENOISER_NORM = _TRAIN["norm"]  # the shipped denoiser's normalisation
DENOISER_UPSAMPLE = _TRAIN["upsample"]  # and its upsampling
# a tiny network and crop so that a run takes seconds on two cores
TINY = {
    "ngf": 8,
    "num_downs": 4,
    "ndf": 8,
    "crop_size": 32,
    "batch_size": 2,
    "num_workers": 0,
    "num_threads": 2,
    "epoch_length": "$None",  # one pass over the tiny dataset per epoch (train.json caps it for the real run)
}


def _png(path: Path, rng: np.random.Generator) -> None:
    y, x = np.mgrid[:64, :64]
    img = 128 + 80 * np.sin(x / 5 + rng.uniform(0, 6)) * np.cos(y / 7) + rng.normal(0, 10, (64, 64))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Datalists laid out as `usdespeckle prepare-data` and the pairs recipe write them, 64x64 PNGs."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(7)
    lists: dict[str, dict] = {"simulator": {}, "natural": {}, "mri_pairs": {}}
    for split, n in (("training", 4), ("validation", 1)):
        lists["simulator"][split] = [
            {"image": f"bmode/{split}{i}.png", "echogenicity": f"echogenicity/{split}{i}.png"}
            for i in range(n)
        ]
        lists["natural"][split] = [{"label": f"natural/{split}{i}.png"} for i in range(n)]
        lists["mri_pairs"][split] = [
            {"image": f"mri_pairs/{split}{i}_us.png", "label": f"mri/{split}{i}.png"} for i in range(n)
        ]
        for items in (lists[k][split] for k in lists):
            for item in items:
                for rel in item.values():
                    _png(root / rel, rng)
    for name, content in lists.items():
        (root / f"datalist_{name}.json").write_text(json.dumps(content))
    return root


def _workflow(
    config: str | list[str],
    bundle_root: Path,
    dataset_dir: Path,
    workflow_type: str = "train",
    run_id: str = "training",
    **overrides,
) -> ConfigWorkflow:
    files = [str(CONFIGS / c) for c in ([config] if isinstance(config, str) else config)]
    wf = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        run_id=run_id,
        bundle_root=str(bundle_root),
        dataset_dir=str(dataset_dir),
        **{**TINY, **overrides},
    )
    wf.initialize()
    return wf


def _run_counting_iterations(wf: ConfigWorkflow) -> list[int]:
    iterations: list[int] = []
    trainer = wf.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: iterations.append(e.state.iteration))
    wf.run()
    wf.finalize()
    return iterations


@pytest.mark.slow  # 30-40 s on a loaded 2-core machine, about 10 s idle
def test_denoiser_training_checkpoints_and_resumes(tmp_path: Path, dataset_dir: Path) -> None:
    wf = _workflow("train.json", tmp_path, dataset_dir, num_epochs_constant=1, num_epochs_decay=0)
    assert not wf.check_properties()  # no missing required bundle property
    first = _run_counting_iterations(wf)
    # 4 MRI pairs + 4 Rayleigh and 4 Gamma photographs + 4 physics B-mode pairs + 4 maps through the
    # acquisition chain (no real frames in this folder), batch 2, drop_last: 10 iterations per epoch
    assert first == list(range(1, 11))
    models = tmp_path / "models"
    ckpt = bundle_utils.latest_checkpoint(models, "denoiser")
    assert ckpt is not None
    assert ckpt.endswith("denoiser_checkpoint_epoch=1.pt")
    weights = torch.load(models / "model.pt", weights_only=True)
    Pix2PixUNetGenerator(ngf=8, num_downs=4, norm=DENOISER_NORM, upsample=DENOISER_UPSAMPLE).load_state_dict(
        weights
    )  # a plain generator state dict

    # "interrupted" after epoch 1: a longer run picks up at iteration 11 from the saved states
    second = _run_counting_iterations(
        _workflow("train.json", tmp_path, dataset_dir, num_epochs_constant=1, num_epochs_decay=1)
    )
    assert second == list(range(11, 21))
    state = torch.load(bundle_utils.latest_checkpoint(models, "denoiser"), weights_only=True)
    assert state["trainer"]["iteration"] == 20
    assert state["g_lr_scheduler"]["last_epoch"] == 2
    assert {"g_scaler", "d_scaler"} <= set(state)  # one GradScaler per optimizer, resumed with the rest
    assert state["g_lr_scheduler"]["_last_lr"][0] == pytest.approx(0.0002 * 0.0)  # decayed to 0 at the end


def test_denoiser_learns_physics_pairs_and_evaluates_on_them(tmp_path: Path, dataset_dir: Path) -> None:
    wf = _workflow("train.json", tmp_path, dataset_dir, num_epochs_constant=1, num_epochs_decay=0)
    # third kind of pairs: physics-simulated B-mode in, the echogenicity map it was made from out
    physics = wf.parser.get_parsed_content("train#physics_data")
    assert [(Path(d["image"]).parent.name, Path(d["label"]).parent.name) for d in physics] == [
        ("bmode", "echogenicity")
    ] * 4
    item = wf.parser.get_parsed_content("train#physics_dataset")[0]
    assert item["image"].shape == item["label"].shape == (1, 32, 32)
    assert not torch.equal(item["image"], item["label"])
    wf.run()
    wf.finalize()

    # the zoo's `run` id; evaluate.json scores the shipped self-ensemble, not the one-pass generator
    evaluation = _workflow(
        ["train.json", "evaluate.json"], tmp_path, dataset_dir, "eval", "run", eval_split="validation"
    )
    network = evaluation.parser.get_parsed_content("validate#evaluator").network
    assert isinstance(network, SelfEnsemble)
    assert len(network.mirrorings) == evaluation.parser["export_mirrorings"]
    evaluation.run()
    evaluation.finalize()
    rows = (tmp_path / "eval" / "val_psnr_raw.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3  # header + one validation image of each kind (MRI pair, photograph, physics)


def test_simulator_training_uses_low_level_maps(tmp_path: Path, dataset_dir: Path) -> None:
    wf = _workflow(SIMULATOR, tmp_path, dataset_dir, num_epochs_constant=1, num_epochs_decay=0)
    assert not wf.check_properties()
    item = wf.parser.get_parsed_content("train#dataset")[0]
    assert len(torch.unique(item["image"])) <= 8  # the quantised low-level map
    assert len(torch.unique(item["label"])) > 8  # the B-mode itself
    assert _run_counting_iterations(wf) == [1, 2]
    assert (tmp_path / "models" / "simulator.pt").is_file()
    assert bundle_utils.latest_checkpoint(tmp_path / "models", "simulator") is not None


def test_shipped_weights_load_into_their_training_configs() -> None:
    """train.json builds the shipped denoiser's generator, train.json + train_simulator.json the simulator's."""
    for configs, weights in ((["train.json"], "model.pt"), (SIMULATOR, "simulator.pt")):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / c) for c in configs])
        parser["device"] = "$torch.device('cpu')"
        network = parser.get_parsed_content("network_def")
        state = torch.load(BUNDLE / "models" / weights, map_location="cpu", weights_only=True)
        network.load_state_dict(state.get("model", state))  # strict: every weight has its place


def test_every_kind_of_pair_shares_one_loading_chain(dataset_dir: Path) -> None:
    """Each kind of pair states only what differs: one load, one crop-and-flip, one batch ending."""
    texts = [(CONFIGS / c).read_text() for c in SIMULATOR]
    assert [t.count('"LoadImaged"') for t in texts] == [1, 0]
    assert [t.count('"RandSpatialCropd"') for t in texts] == [1, 0]
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"dataset_dir": str(dataset_dir), "crop_size": 32, "device": "$torch.device('cpu')"})
    kinds = ["pairs", "natural", "physics", "gamma", "acquisition"]
    for kind in kinds:
        item = parser.get_parsed_content(f"train#{kind}_dataset")[0]
        assert set(item) == {"image", "label"}, kind
        for key in ("image", "label"):
            assert item[key].shape == (1, 32, 32), (kind, key)
            assert item[key].dtype == torch.float32
            assert float(item[key].min()) >= 0.0, (kind, key)
            assert float(item[key].max()) <= 1.0 + 1e-6, (kind, key)
        assert not torch.equal(item["image"], item["label"]), kind  # each kind makes its own input
    for kind in ("pairs", "natural", "physics"):
        item = parser.get_parsed_content(f"validate#{kind}_dataset")[0]
        side = -(-64 // 2 ** parser["num_downs"]) * 2 ** parser["num_downs"]  # whole 64x64, padded
        assert item["image"].shape == item["label"].shape == (1, side, side), kind


def test_simulator_override_holds_only_differences() -> None:
    """Every key of train_simulator.json changes or adds something to train.json (MONAI's stacking)."""
    denoiser = json.loads((CONFIGS / "train.json").read_text())
    simulator = json.loads((CONFIGS / "train_simulator.json").read_text())
    unset = object()
    for key, value in simulator.items():
        if key.startswith("+"):  # appended to train.json's list
            assert not set(value) & set(denoiser[key[1:]]), key
            continue
        base: Any = denoiser
        for part in key.split("#"):
            base = base.get(part, unset) if isinstance(base, dict) else unset
        assert base != value, f"{key} repeats train.json's value"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("configs", "weights"),
    [(["train.json"], "model.pt"), (SIMULATOR, "simulator.pt")],
    ids=["denoiser", "simulator"],
)
def test_bundle_run_command_as_pasted(
    tmp_path: Path, dataset_dir: Path, configs: list[str], weights: str
) -> None:
    files = [str(CONFIGS / c) for c in configs]  # a stack goes as the README writes it: "['a.json','b.json']"
    cmd = [PYTHON, "-m", "monai.bundle", "run", "training", "--bundle_root", str(tmp_path)]
    cmd += ["--config_file", files[0] if len(files) == 1 else str(files), "--dataset_dir", str(dataset_dir)]
    cmd += ["--num_epochs_constant", "1", "--num_epochs_decay", "0"]
    for key, value in TINY.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "models" / weights).is_file()


@pytest.mark.slow
def test_multi_gpu_config_runs_with_torchrun_on_cpu(tmp_path: Path, dataset_dir: Path) -> None:
    configs = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "training",
    ]
    cmd += ["--bundle_root", str(tmp_path), "--config_file", configs, "--dataset_dir", str(dataset_dir)]
    cmd += ["--num_epochs_constant", "1", "--num_epochs_decay", "0", "--num_threads", "1"]
    for key, value in TINY.items():
        if key != "num_threads":
            cmd += [f"--{key}", str(value)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(bundle_utils.latest_checkpoint(tmp_path / "models", "denoiser"), weights_only=True)
    assert state["trainer"]["iteration"] == 5  # 20 samples over 2 ranks, batch 2: 5 iterations each
    assert not any(k.startswith("module.") for k in state["generator"])


def _run_bundle(bundle_root: Path, data: Path, out: Path, *configs: str, **overrides: str) -> None:
    files = [str(bundle_root / "configs" / c) for c in ("inference.json", *configs)]
    cmd = [PYTHON, "-m", "monai.bundle", "run", "--config_file", str(files) if configs else files[0]]
    cmd += ["--bundle_root", str(bundle_root), "--dataset_dir", str(data), "--output_dir", str(out)]
    for key, value in overrides.items():
        cmd += [f"--{key}", value]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    done = subprocess.run(cmd, cwd=data.parent, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow  # about 40 s on a loaded 2-core machine: an export and three bundle runs
def test_bundle_inference_gives_the_library_output(tmp_path: Path) -> None:
    """inference.json (network_def + model.pt, and the TorchScript override) == usdespeckle run's mapping."""
    import SimpleITK as sitk

    from usdespeckle.runtime.inference import despeckle_array
    from usdespeckle.runtime.io import read_image, write_image

    bundle_root, _ = make_exported_bundle(tmp_path / "bundle")
    data, out, out_ts = tmp_path / "volumes", tmp_path / "out", tmp_path / "out_ts"
    data.mkdir()
    rng = np.random.default_rng(3)
    affine = np.array([[0.3, 0, 0, 10.0], [0, 0.4, 0, -5.0], [0, 0, 0.5, 2.0], [0, 0, 0, 1]])
    volumes = {
        "divisible": rng.gamma(2.0, 40.0, (32, 48, 3)),
        "odd": rng.gamma(2.0, 40.0, (21, 37, 4)) - 300.0,  # negative intensities map back too
        "small": rng.gamma(2.0, 40.0, (9, 12, 2)),  # slices under half the divisor (16): numpy reflection
    }
    for name, volume in volumes.items():
        nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), data / f"{name}.nii.gz")
    _run_bundle(bundle_root, data, out)
    _run_bundle(bundle_root, data, out_ts, "inference_torchscript.json")
    for name, volume in volumes.items():
        # the library reads SimpleITK's (k, j, i) array; slices of constant k are the bundle's slice_axis 2
        source = sitk.GetArrayFromImage(sitk.ReadImage(str(data / f"{name}.nii.gz")))
        expected = despeckle_array(source, axis=0, bundle_root=bundle_root, backend="torch")
        tolerance = 1e-4 * float(np.ptp(source))  # 1e-4 of the intensity range, in the input's units
        for folder in (out, out_ts):
            result = nib.load(folder / f"{name}_despeckled.nii.gz")
            assert result.shape == volume.shape
            assert result.get_data_dtype() == np.float32
            np.testing.assert_allclose(result.affine, affine, atol=1e-5)
            got = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{name}_despeckled.nii.gz")))
            np.testing.assert_allclose(got, expected, atol=tolerance, rtol=0)
        assert float(np.abs(expected - source).max()) > 100 * tolerance  # it changed the image

    # a 2D PNG: the output is in the input's grey levels, rounded to uint8 like usdespeckle.runtime.io
    pngs, png_out = tmp_path / "pngs", tmp_path / "png_out"
    pngs.mkdir()
    grey = (rng.gamma(2.0, 40.0, (40, 52)).clip(0, 255)).astype(np.uint8)
    Image.fromarray(grey).save(pngs / "frame.png")
    _run_bundle(bundle_root, pngs, png_out, input_dims="2", input_pattern="*.png", output_ext=".png")
    written = np.asarray(Image.open(png_out / "frame_despeckled.png"))
    assert written.dtype == np.uint8
    assert written.shape == grey.shape
    library_input = sitk.GetArrayFromImage(read_image(pngs / "frame.png"))
    write_image(
        sitk.GetImageFromArray(despeckle_array(library_input, bundle_root=bundle_root)), tmp_path / "lib.png"
    )
    library = np.asarray(Image.open(tmp_path / "lib.png"))
    assert library.shape == grey.shape
    assert np.abs(written.astype(int) - library.astype(int)).max() <= 1  # rounding at a .5 boundary at most
    assert written.std() > 1.0  # not the all-zero image of a [0, 1] float cast to uint8


def test_inference_workflow_has_required_properties(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "metadata.json").write_text((CONFIGS / "metadata.json").read_text())
    (tmp_path / "models").mkdir()
    torch.save(
        Pix2PixUNetGenerator(ngf=4, num_downs=4, norm=DENOISER_NORM, upsample=DENOISER_UPSAMPLE).state_dict(),
        tmp_path / "models" / "model.pt",
    )
    bundle_utils.update_checksums(tmp_path)
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(tmp_path),
        dataset_dir=str(tmp_path),
        ngf=4,
        num_downs=4,
    )
    wf.initialize()  # checks model.pt against metadata.json
    assert not wf.check_properties()
    network = wf.parser.get_parsed_content("network")
    assert isinstance(network, SelfEnsemble)
    assert len(network.mirrorings) == wf.parser["mirrorings"]
    (tmp_path / "models" / "model.pt").write_bytes(b"corrupt")
    with pytest.raises(RuntimeError):  # the sha256 check in `initialize` refuses changed weights
        ConfigWorkflow(
            config_file=str(CONFIGS / "inference.json"),
            meta_file=str(CONFIGS / "metadata.json"),
            workflow_type="infer",
            bundle_root=str(tmp_path),
        ).initialize()


def test_standard_export_and_verify_net_in_out(tmp_path: Path) -> None:
    """MONAI's ckpt_export of inference.json's network_def is the self-ensemble of model.pt's generator."""
    from monai.bundle import ckpt_export, verify_net_in_out

    torch.manual_seed(0)
    generator = Pix2PixUNetGenerator(
        ngf=4, num_downs=4, norm=DENOISER_NORM, upsample=DENOISER_UPSAMPLE
    ).eval()
    (tmp_path / "models").mkdir()
    torch.save(generator.state_dict(), tmp_path / "models" / "model.pt")
    common = {
        "meta_file": str(CONFIGS / "metadata.json"),
        "config_file": str(CONFIGS / "inference.json"),
        "bundle_root": str(tmp_path),
        "ngf": 4,
        "num_downs": 4,
    }
    ckpt_export(
        "network_def",
        filepath=str(tmp_path / "models" / "model.ts"),
        ckpt_file=str(tmp_path / "models" / "model.pt"),
        **common,
    )
    exported = torch.jit.load(str(tmp_path / "models" / "model.ts"))
    mirrorings = json.loads((CONFIGS / "inference.json").read_text())["mirrorings"]
    assert len(exported.mirrorings) == mirrorings
    x = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), SelfEnsemble(generator, mirrorings).eval()(x))
        # the shipped setting (1.0.0) is one pass: the library mirrors for --passes; more would differ
        single = float((exported(x) - generator(x)).abs().max())
        assert single < 1e-5 if mirrorings == 1 else single > 1e-4
    verify_net_in_out("network_def", **common)  # raises on a shape or dtype mismatch with metadata.json


@pytest.mark.slow  # 20-30 s: exports and runs the ensemble at 256x256
def test_export_script_ships_the_self_ensemble(tmp_path: Path) -> None:
    """training/export_bundle.py on a tiny bundle: TorchScript and ONNX run the exported mirrorings."""
    import onnxruntime as ort

    root, generator = make_exported_bundle(tmp_path, ngf=8, num_downs=4)
    flips = json.loads((CONFIGS / "train.json").read_text())["export_mirrorings"]
    assert flips == 1, "the shipped denoiser is one pass; the library mirrors for --passes"
    inference = json.loads((root / "configs" / "inference.json").read_text())
    assert (inference["ngf"], inference["num_downs"], inference["mirrorings"]) == (8, 4, flips)
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == ["16*n", "16*n"]
    expected_net = SelfEnsemble(generator, flips).eval()
    x = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        expected = expected_net(x)
        exported = torch.jit.load(str(root / "models" / "model.ts"))
        assert len(exported.mirrorings) == flips
        torch.testing.assert_close(exported(x), expected)
    session = ort.InferenceSession(str(root / "models" / "model.onnx"))
    onnx_out = session.run(None, {"image": x.numpy()})[0]  # dynamic batch, height and width
    np.testing.assert_allclose(onnx_out, expected.numpy(), atol=1e-5)
    assert bundle_utils.verify_checksums(root, require_all=True)["models/model.onnx"] == "ok"


def test_inference_config_builds_the_training_network() -> None:
    """inference.json's generator has train.json's arguments and values: the export script changes nothing."""
    import importlib.util
    import shutil
    import tempfile

    spec = importlib.util.spec_from_file_location("export_bundle", REPO / "training" / "export_bundle.py")
    export_bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_bundle)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(CONFIGS, Path(tmp) / "configs")
        assert export_bundle.sync_network_definition(Path(tmp)) == []
        train = json.loads((CONFIGS / "train.json").read_text())
        train["ngf"] = train["ngf"] * 2
        (Path(tmp) / "configs" / "train.json").write_text(json.dumps(train))
        assert export_bundle.sync_network_definition(Path(tmp)) == [
            f"ngf: {train['ngf'] // 2} -> {train['ngf']}"
        ]
        # the generated keys are named in inference.json's first key, so no edit of them is silent
        inference = json.loads((Path(tmp) / "configs" / "inference.json").read_text())
        assert next(iter(inference)) == "_desc_"
        assert "training/export_bundle.py" in inference["_desc_"]
        for key in ("network_def#network", "ngf", "num_downs", "norm", "mirrorings"):
            assert key in inference["_desc_"], key
        inference["_desc_"] = "hand-written"
        (Path(tmp) / "configs" / "inference.json").write_text(json.dumps(inference))
        assert [c.split(":")[0] for c in export_bundle.sync_network_definition(Path(tmp))] == ["_desc_"]


@pytest.mark.slow  # exports the shipped network twice and runs it at 256x256 (8 passes)
def test_standard_export_reproduces_the_shipped_models(tmp_path: Path) -> None:
    """ckpt_export / onnx_export of inference.json with the shipped model.pt give the shipped model.ts / model.onnx."""
    import onnxruntime as ort
    from monai.bundle import ckpt_export, onnx_export

    common = {
        "net_id": "network_def",
        "ckpt_file": str(BUNDLE / "models" / "model.pt"),
        "meta_file": str(CONFIGS / "metadata.json"),
        "config_file": str(CONFIGS / "inference.json"),
        "bundle_root": str(BUNDLE),
    }
    ckpt_export(filepath=str(tmp_path / "model.ts"), **common)
    onnx_export(
        filepath=str(tmp_path / "model.onnx"),
        input_shape=[1, 1, 256, 256],
        use_trace=True,
        converter_kwargs={"input_names": ["image"], "output_names": ["pred"], "dynamo": False},
        **common,
    )
    x = torch.rand(1, 1, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        shipped = torch.jit.load(str(BUNDLE / "models" / "model.ts"))(x)
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "model.ts"))(x), shipped, atol=1e-5, rtol=0)
    shipped_onnx = ort.InferenceSession(str(BUNDLE / "models" / "model.onnx")).run(
        None, {"image": x.numpy()}
    )[0]
    ours = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"image": x.numpy()})[0]
    np.testing.assert_allclose(ours, shipped_onnx, atol=1e-5, rtol=0)
    np.testing.assert_allclose(shipped_onnx, shipped.numpy(), atol=1e-4, rtol=0)


def test_checksums_detect_changes(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "metadata.json").write_text((CONFIGS / "metadata.json").read_text())
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"weights v1")
    sums = bundle_utils.update_checksums(tmp_path)
    assert sums["models/model.pt"] == bundle_utils.sha256_file(tmp_path / "models" / "model.pt")
    assert sums["models/model.ts"] is None
    assert bundle_utils.verify_checksums(tmp_path)["models/model.pt"] == "ok"
    (tmp_path / "models" / "model.pt").write_bytes(b"weights v2")
    with pytest.raises(ValueError, match="sha256"):
        bundle_utils.verify_checksums(tmp_path)
    (tmp_path / "models" / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.pt"):
        bundle_utils.verify_checksums(tmp_path, require_all=True)
    with pytest.raises(FileNotFoundError, match="metadata"):
        bundle_utils.verify_checksums(tmp_path / "models")


def test_shipped_weights_load_and_match_metadata() -> None:
    present = [rel for rel in bundle_utils.WEIGHT_FILES if (BUNDLE / rel).is_file()]
    assert present == list(bundle_utils.WEIGHT_FILES)  # the repository ships every weight file
    status = bundle_utils.verify_checksums(BUNDLE, require_all=True)
    assert all(status[rel] == "ok" for rel in present), status
    for rel in present:
        if rel.endswith(".pt"):
            state = torch.load(BUNDLE / rel, weights_only=True)
            assert isinstance(state, dict)
            assert all(isinstance(v, torch.Tensor) for v in state.values())
