"""Training content and pairs of the denoiser: dead leaves, the on-the-fly pair stream, its targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from usdespeckle.data.pair_stream import CONTENTS, SPECKLES, PairMix, PairStream, speckle_pair
from usdespeckle.gan.networks import ResidualUNetDenoiser
from usdespeckle.simulation.deadleaves import dead_leaves


def test_dead_leaves_range_and_occluding_flat_regions(rng):
    image = dead_leaves(128, rng, gradient_prob=0.0, blur_px=(0.0, 0.0))
    assert image.shape == (128, 128)
    assert image.dtype == np.float32
    assert image.min() >= 0.0
    assert image.max() <= 1.0
    # flat leaves: most pixels equal their right neighbour, yet there are many distinct grey levels
    assert np.mean(image[:, 1:] == image[:, :-1]) > 0.7
    assert len(np.unique(image)) > 30


def test_dead_leaves_radii_follow_the_power_law(rng):
    small = dead_leaves(128, np.random.default_rng(1), alpha=4.0, blur_px=(0.0, 0.0), gradient_prob=0.0)
    large = dead_leaves(128, np.random.default_rng(1), alpha=2.0, blur_px=(0.0, 0.0), gradient_prob=0.0)

    def edge_density(image: np.ndarray) -> float:
        return float(np.mean(image[:, 1:] != image[:, :-1]))

    assert edge_density(small) > 1.5 * edge_density(large)  # steeper law: smaller leaves, more edges


def test_dead_leaves_refuses_bad_sizes(rng):
    with pytest.raises(ValueError, match="at least 8"):
        dead_leaves(4, rng)
    with pytest.raises(ValueError, match="r_min < r_max"):
        dead_leaves(64, rng, r_min=10, r_max=5)


@pytest.mark.parametrize("kind", SPECKLES)
def test_every_speckle_keeps_the_targets_grey_levels(kind, rng):
    clean = np.full((128, 128), 0.3)
    clean[:, 64:] = 0.8
    speckled, target = speckle_pair(clean, kind, rng)
    assert speckled.shape == target.shape == clean.shape
    assert speckled.dtype == target.dtype == np.float32
    assert float(speckled.min()) >= 0.0
    assert float(speckled.max()) <= 1.0
    left, right = (slice(16, -16), slice(8, 48)), (slice(16, -16), slice(80, 120))
    # the target is speckle-free: flat inside each half (a depth-gain ramp at most), brighter on the right
    assert target[left].std() < 0.03
    assert target[right].mean() > target[left].mean() + 0.05
    # and in the input's own grey levels: the low-passed input stays near the target (no re-mapping)
    smooth = ndi.gaussian_filter(speckled, 6)
    assert abs(float(np.median(smooth[right])) - float(np.median(target[right]))) < 0.12
    assert speckled[right].std() > 0.03  # the input carries speckle


@pytest.mark.parametrize("kind", SPECKLES)
def test_target_is_the_expected_display_of_the_speckled_input(kind, rng):
    # on a flat region the target equals the speckled input's average, wherever the level sits,
    # also near the display floor where speckle peaks are all that shows
    for level in (0.05, 0.5, 0.9):
        clean = np.full((256, 256), level)
        mix = PairMix(rayleigh_decimation=(1,))
        speckled, target = speckle_pair(clean, kind, np.random.default_rng(7), mix)
        inner = (slice(32, -32), slice(32, -32))
        if kind == "acquisition":  # the depth-gain ramp: compare row by row
            assert np.abs(speckled[inner].mean(axis=1) - target[inner].mean(axis=1)).mean() < 0.03
        else:
            assert abs(float(speckled[inner].mean()) - float(target[inner].mean())) < 0.02
            assert float(np.ptp(target[inner])) < 1e-6


def test_expected_display_keeps_dim_tissue_above_black():
    from usdespeckle.simulation.acquisition import expected_display

    below_floor = expected_display(np.full((4, 4), -0.05), dynamic_range_db=50.0)
    assert float(below_floor.min()) > 0.0  # speckle peaks still show: not a black hole
    mid = expected_display(np.full((4, 4), 0.5), dynamic_range_db=50.0)
    # far from the floor the speckle's log average sits 2.5 dB below the mean intensity
    np.testing.assert_allclose(mid, 0.5 - 2.51 / 50.0, atol=0.005)


def test_unknown_kinds_and_bad_mixes_are_refused(rng):
    with pytest.raises(ValueError, match="unknown speckle kind"):
        speckle_pair(np.zeros((16, 16)), "poisson", rng)
    with pytest.raises(ValueError, match="non-negative weights"):
        PairMix(content={"video": 1.0})


def test_stream_draws_every_kind_and_keeps_held_out_content_out():
    stream = PairStream(size=64, seed=3)
    kinds = {stream.draw(np.random.default_rng(i))[2] for i in range(120)}
    assert {k.split("/")[0] for k in kinds} == set(CONTENTS)
    assert {k.split("/")[1] for k in kinds} == set(SPECKLES)
    validation = PairStream(size=64, seed=3, split="validation")
    assert not {id(p) for p in stream.photos} & {id(p) for p in validation.photos}
    assert not set(stream.mri) & set(validation.mri)
    first = next(iter(stream))
    assert first[0].shape == (1, 64, 64)
    again = next(iter(PairStream(size=64, seed=3)))
    np.testing.assert_array_equal(first[0], again[0])  # seeded


def test_residual_denoiser_adds_its_body_to_the_input():
    torch.manual_seed(0)
    network = ResidualUNetDenoiser(features=(8, 8, 16, 16, 32, 8)).eval()
    x = torch.rand(2, 1, 64, 48)
    with torch.no_grad():
        y = network(x)
        assert y.shape == x.shape
        assert not torch.allclose(y, x)
        network.body.final_conv.weight.zero_()
        network.body.final_conv.bias.zero_()
        torch.testing.assert_close(network(x), x)  # a silent body passes the input through


@pytest.mark.slow
def test_training_learns_checkpoints_and_resumes(tmp_path):
    from usdespeckle.gan.denoiser_training import TrainSettings, train

    settings = TrainSettings(
        run_dir=str(tmp_path / "run"), cpu_minutes=0.25, batch=4, crop=64, lr=1e-3, threads=2,
        validate_minutes=100.0,
    )  # fmt: skip
    network = ResidualUNetDenoiser(features=(8, 8, 16, 16, 32, 8))
    before = {k: v.clone() for k, v in network.state_dict().items()}
    first = train(network, settings)
    assert set(first) >= {"psnr_acquisition", "psnr_rayleigh", "psnr_gamma", "psnr_mean", "real_fidelity"}
    assert all(np.isfinite(v) for v in first.values())
    assert any(not torch.equal(before[k], v) for k, v in network.state_dict().items())  # it trained
    log = (tmp_path / "run" / "log.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(log) == 1
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    iterations = state["counters"]["iteration"]
    assert iterations > 0
    # a longer budget on the same folder resumes: the counters go on from the checkpoint
    longer = TrainSettings(**{**settings.__dict__, "cpu_minutes": 0.4})
    train(ResidualUNetDenoiser(features=(8, 8, 16, 16, 32, 8)), longer)
    resumed = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert resumed["counters"]["iteration"] > iterations
    assert len((tmp_path / "run" / "log.jsonl").read_text(encoding="utf-8").splitlines()) == 2


def test_bundle_config_builds_the_network_and_the_training_settings():
    from monai.bundle import ConfigParser

    from usdespeckle.data.pair_stream import PairMix
    from usdespeckle.gan.denoiser_training import TrainSettings
    from usdespeckle.runtime.bundle_utils import default_bundle_root

    parser = ConfigParser()
    parser.read_config(str(default_bundle_root() / "configs" / "train_denoiser.json"))
    network = parser.get_parsed_content("network_def")
    assert isinstance(network, ResidualUNetDenoiser)
    settings = parser.get_parsed_content("settings")
    assert isinstance(settings, TrainSettings)
    assert settings.run_dir.endswith("runs/denoiser")
    mix = parser.get_parsed_content("pair_mix")
    assert isinstance(mix, PairMix)
    assert set(mix.speckle) == set(SPECKLES)
