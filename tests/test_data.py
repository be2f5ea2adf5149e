"""Tests of dataset preparation: determinism, leakage between splits, datalists, refusals, PNG format."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from PIL import Image

from usdespeckle import cli
from usdespeckle.data.dataset import DatasetExistsError, PrepareSettings, prepare_dataset
from usdespeckle.data.sources import MRI_SLAB_GAP, SPLITS, mri_slab_split, random_shapes_map
from usdespeckle.simulation.speckle import rayleigh_speckle

SMALL = PrepareSettings(
    seed=3, size=64, mri_step=8, mri_views=2, natural_crops=2, simulator_count=12, real_bmode=False
)
DATALISTS = (
    "datalist_mri.json",
    "datalist_natural.json",
    "datalist_simulator.json",
    "datalist_mri_extra_test.json",
)


def cheap_bmode(echogenicity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A stand-in for the physics simulator: the method's Rayleigh speckle."""
    return rayleigh_speckle(echogenicity, rng, decimation=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("data") / "small"
    manifest, written = prepare_dataset(out, SMALL, bmode_maker=cheap_bmode, progress=False)
    assert written
    return out, manifest


def _load(out: Path, name: str) -> dict:
    return json.loads((out / name).read_text())


def test_layout_counts_and_png_format(dataset):
    out, manifest = dataset
    for name in DATALISTS:
        assert (out / name).is_file()
    mri = _load(out, "datalist_mri.json")
    for split in SPLITS:
        assert len(mri[split]) > 0, split
        assert len(_load(out, "datalist_natural.json")[split]) > 0
    simulator = _load(out, "datalist_simulator.json")
    assert sum(len(simulator[s]) for s in SPLITS) == SMALL.simulator_count
    assert len(_load(out, "datalist_mri_extra_test.json")["test"]) > 0
    assert manifest["counts"]["mri"] == {s: len(mri[s]) for s in SPLITS}
    images = sum(n for content in manifest["counts"].values() for n in content.values())
    # every simulator item has two files: its B-mode image and its echogenicity map
    assert len(manifest["files"]) == images + SMALL.simulator_count
    for rel in list(manifest["files"])[::25]:
        with Image.open(out / rel) as img:
            assert img.format == "PNG"
            assert img.mode == "L"
            assert img.size == (64, 64)
    assert manifest["parameters"]["seed"] == 3
    assert manifest["parameters"]["size"] == 64


def test_datalists_resolve_with_monai(dataset):
    out, _ = dataset
    for name in DATALISTS:
        keys = [k for k in SPLITS if k in _load(out, name)]
        for key in keys:
            items = load_decathlon_datalist(out / name, is_segmentation=True, data_list_key=key, base_dir=out)
            for item in items:
                path = Path(item["image"] if "image" in item else item["label"])
                assert path.is_absolute()
                assert path.is_file()
                assert not Path(item["source"]).exists()  # sources are names, never resolved as paths


def test_no_source_shared_between_training_and_evaluation(dataset):
    out, _ = dataset
    training, evaluation = set(), set()
    for name in DATALISTS[:3]:
        content = _load(out, name)
        train_sources = {item["source"] for item in content["training"]}
        eval_sources = {item["source"] for s in ("validation", "test") for item in content[s]}
        val_sources = {item["source"] for item in content["validation"]}
        test_sources = {item["source"] for item in content["test"]}
        assert not train_sources & eval_sources, name
        assert not val_sources & test_sources, name
        training |= train_sources
        evaluation |= eval_sources
    # and across datalists: the simulator never trains on what the denoiser is tested on
    assert not training & evaluation


def test_mri_slabs_leave_gaps_and_keep_mirrors_together(dataset):
    out, _ = dataset
    mri = _load(out, "datalist_mri.json")
    where: dict[str, dict[int, str]] = {}
    for split in SPLITS:
        for item in mri[split]:
            orientation, index = re.match(r"mri/(\w+?)_(\d+)_v\d+\.png", item["label"]).groups()
            where.setdefault(orientation, {})[int(index)] = split
    assert set(where) == {"sagittal", "coronal", "axial"}
    for orientation, splits in where.items():
        train = np.array([i for i, s in splits.items() if s == "training"])
        for i, s in splits.items():
            if s != "training":
                assert np.abs(train - i).min() > MRI_SLAB_GAP // 2, (orientation, i)


def test_mri_slab_split_unit():
    axial = mri_slab_split(range(20, 120), "axial", gap=6)
    by_split = {s: [i for i, v in axial.items() if v == s] for s in SPLITS}
    assert max(by_split["training"]) + 6 <= min(by_split["validation"])
    assert max(by_split["validation"]) + 6 <= min(by_split["test"])
    assert len(by_split["training"]) > len(by_split["test"]) > 0
    sagittal = mri_slab_split(range(0, 101), "sagittal", gap=4)
    for i, split in sagittal.items():
        assert sagittal.get(100 - i) == split  # mirror slice, same split
    assert sagittal[50] == "test"
    assert sagittal[0] == "training"


def _sha256_map(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder``, as written on disk."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_same_seed_same_checksums_other_seed_differs(dataset, tmp_path):
    out, manifest = dataset
    again, written = prepare_dataset(tmp_path / "again", SMALL, bmode_maker=cheap_bmode, progress=False)
    assert written
    assert again["files"] == manifest["files"]
    # every file on disk, the datalists and the manifest included, is byte-identical
    first, second = _sha256_map(out), _sha256_map(tmp_path / "again")
    assert first == second
    assert {"manifest.json", "datalist_simulator.json"} <= set(first)
    assert set(manifest["files"]) | set(DATALISTS) | {"manifest.json"} == set(first)
    other = PrepareSettings(
        **{**SMALL.__dict__, "seed": 4, "mri_step": 40, "natural_crops": 1, "simulator_count": 3}
    )
    different, _ = prepare_dataset(tmp_path / "other", other, bmode_maker=cheap_bmode, progress=False)
    shared = set(different["files"]) & set(manifest["files"])
    changed = [rel for rel in shared if different["files"][rel] != manifest["files"][rel]]
    assert changed  # random crops and views depend on the seed
    on_disk = _sha256_map(tmp_path / "other")
    assert [rel for rel in shared if on_disk[rel] != first[rel]] == changed


def test_an_item_does_not_depend_on_the_counts_of_the_others(dataset, tmp_path):
    """Each item has its own random stream (data.RNG_*), so fewer crops or simulator items change nothing else."""
    _, manifest = dataset
    fewer = PrepareSettings(**{**SMALL.__dict__, "natural_crops": 1, "simulator_count": 3})
    smaller, _ = prepare_dataset(tmp_path / "fewer", fewer, bmode_maker=cheap_bmode, progress=False)
    shared = set(smaller["files"]) & set(manifest["files"])
    assert {rel.split("/")[0] for rel in shared} == {"mri", "mri_extra", "natural", "bmode", "echogenicity"}
    assert any(rel.startswith("bmode/training_00002") for rel in shared)
    assert {rel: smaller["files"][rel] for rel in shared} == {rel: manifest["files"][rel] for rel in shared}


def test_existing_dataset_same_is_kept_different_is_refused(dataset, tmp_path):
    out, manifest = dataset
    before = (out / "manifest.json").stat().st_mtime_ns
    again, written = prepare_dataset(out, SMALL, bmode_maker=cheap_bmode, progress=False)
    assert not written
    assert again == manifest
    assert (out / "manifest.json").stat().st_mtime_ns == before
    other = PrepareSettings(**{**SMALL.__dict__, "size": 32})
    with pytest.raises(DatasetExistsError, match="--force"):
        prepare_dataset(out, other, bmode_maker=cheap_bmode, progress=False)
    # a folder with someone else's files is refused too, and --force keeps files we did not write
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetExistsError):
        prepare_dataset(foreign, other, bmode_maker=cheap_bmode, progress=False)
    tiny = PrepareSettings(
        seed=0, size=32, mri_step=40, mri_views=1, natural_crops=1, simulator_count=0, real_bmode=False
    )
    _, written = prepare_dataset(foreign, tiny, force=True, progress=False)
    assert written
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_cli_refuses_different_dataset_and_accepts_same(dataset, capsys):
    out, _ = dataset
    assert cli.main(["prepare-data", str(out), "--size", "32", "--simulator-count", "0"]) == 1
    assert "--force" in capsys.readouterr().err
    assert cli.main(["prepare-data", str(out), "--size", "8", "--simulator-count", "0"]) == 1
    assert "size must be at least 32" in capsys.readouterr().err


def test_invalid_settings_and_missing_simulator(tmp_path):
    with pytest.raises(ValueError, match="bmode_maker"):
        prepare_dataset(tmp_path / "x", PrepareSettings(size=32, simulator_count=2))
    with pytest.raises(ValueError, match="mri_views"):
        prepare_dataset(tmp_path / "x", PrepareSettings(mri_views=0))
    assert not (tmp_path / "x").exists()


def test_random_shapes_map_range_and_determinism():
    a = random_shapes_map(64, np.random.default_rng(1))
    b = random_shapes_map(64, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (64, 64)
    assert a.min() >= 0
    assert a.max() <= 1
    assert len(np.unique(a)) >= 2  # at least one shape on the background


def test_cli_with_the_physics_simulator(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["prepare-data", str(out), "--size", "64", "--seed", "1", "--mri-step", "30", "--mri-views", "1"]
    argv += ["--no-real-bmode"]
    argv += ["--natural-crops", "1", "--simulator-count", "6", "--quiet"]
    assert cli.main(argv) == 0
    simulator = _load(out, "datalist_simulator.json")
    assert sum(len(simulator[s]) for s in SPLITS) == 6
    for item in simulator["training"]:
        bmode = np.asarray(Image.open(out / item["image"]), dtype=np.float64)
        echogenicity = np.asarray(Image.open(out / item["echogenicity"]), dtype=np.float64)
        assert bmode.shape == (64, 64)
        assert bmode.std() > 0
        # speckle: the B-mode image varies where the echogenicity map is flat
        flat = echogenicity == np.median(echogenicity)
        if flat.sum() > 100:
            assert bmode[flat].std() > 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"][:3] == ["usdespeckle", "prepare-data", str(out)]
    assert "--simulator-count=6" in manifest["command"]
    assert cli.main(argv) == 0  # the same dataset again: nothing to do
    assert "already holds this dataset" in capsys.readouterr().out
