from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist
from PIL import Image

from usdespeckle.gan.pairs import make_mri_pairs
from usdespeckle.simulation.lowlevel import low_level_map


class Invert(torch.nn.Module):
    """A stand-in simulator with a known answer: 1 - input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.0 - x


def _make_mri_dataset(root, rng):
    datalist = {}
    for split, n in (("training", 3), ("validation", 1), ("test", 2)):
        items = []
        for i in range(n):
            rel = f"mri/{split}/slice_{i:03d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / rel)
            items.append({"label": rel, "source": f"volume_{split}"})
        datalist[split] = items
    (root / "datalist_mri.json").write_text(json.dumps(datalist))
    return datalist


def test_pairs_keep_splits_and_hold_simulator_output(tmp_path, rng):
    source = _make_mri_dataset(tmp_path, rng)
    calls = []
    written = make_mri_pairs(tmp_path, Invert(), batch_size=2, progress=lambda d, t: calls.append((d, t)))

    assert [p.name for p in written] == ["datalist_mri_pairs.json"]
    pairs = json.loads(written[0].read_text())
    assert {k: len(v) for k, v in pairs.items()} == {k: len(v) for k, v in source.items()}
    assert calls[-1] == (6, 6)
    for split in source:
        for item, original in zip(pairs[split], source[split], strict=True):
            assert item["label"] == original["label"]
            assert item["source"] == original["source"]
            mri = np.asarray(Image.open(tmp_path / item["label"]), dtype=np.float32) / 255
            bmode = np.asarray(Image.open(tmp_path / item["image"]), dtype=np.float32) / 255
            np.testing.assert_allclose(bmode, 1.0 - low_level_map(mri), atol=1 / 255)
    # MONAI resolves both keys against the data folder
    items = load_decathlon_datalist(written[0], data_list_key="test", base_dir=tmp_path)
    assert all(str(tmp_path) in it["image"] and str(tmp_path) in it["label"] for it in items)


def test_pairs_need_prepared_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare-data"):
        make_mri_pairs(tmp_path, Invert())


def test_simulated_bmode_keeps_shapes_the_generator_cannot_take_directly():
    from usdespeckle.gan.networks import Pix2PixUNetGenerator
    from usdespeckle.gan.simulator import simulate_bmode_from_mri

    torch.manual_seed(0)
    generator = Pix2PixUNetGenerator(ngf=4, num_downs=4).eval()  # needs multiples of 16
    slices = np.random.default_rng(1).random((2, 21, 37)).astype(np.float32)
    out = simulate_bmode_from_mri(generator, slices)
    assert out.shape == (2, 21, 37)
    assert out.dtype == np.float32
    assert out.min() >= 0.0
    assert out.max() <= 1.0
    # same answer as running the generator on a reflection-padded 32x48 map and cropping back
    maps = np.stack([low_level_map(s) for s in slices])
    padded = np.pad(maps, ((0, 0), (5, 6), (5, 6)), mode="reflect")
    with torch.no_grad():
        direct = generator(torch.from_numpy(padded[:, None]))[:, 0, 5:26, 5:42].clamp(0, 1).numpy()
    np.testing.assert_allclose(out, direct, atol=1e-6)


def test_load_simulator_checks_the_shipped_weights(tmp_path):
    import shutil

    from usdespeckle.gan.simulator import load_simulator
    from usdespeckle.runtime.bundle_utils import default_bundle_root

    shipped = default_bundle_root()
    simulator = load_simulator(shipped)
    assert not simulator.training
    with torch.no_grad():
        assert simulator(torch.zeros(1, 1, 128, 128)).shape == (1, 1, 128, 128)

    copy = tmp_path / "bundle"
    shutil.copytree(shipped / "configs", copy / "configs")
    with pytest.raises(FileNotFoundError, match="no simulator weights"):
        load_simulator(copy)
    (copy / "models").mkdir()
    (copy / "models" / "simulator.pt").write_bytes(b"not the shipped weights")
    with pytest.raises(ValueError, match="sha256"):
        load_simulator(copy)
