"""Tests of the conditional pix2pix trainer: losses, schedule, one iteration, learning."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.networks.nets import PatchDiscriminator

from usdespeckle.gan.networks import Pix2PixUNetGenerator
from usdespeckle.gan.trainer import Pix2PixTrainer, constant_then_linear_decay, gan_loss


def test_gan_loss_known_values() -> None:
    zeros = torch.zeros(2, 1, 4, 4)
    assert float(gan_loss(zeros, True, "lsgan")) == pytest.approx(1.0)
    assert float(gan_loss(zeros, False, "lsgan")) == pytest.approx(0.0)
    assert float(gan_loss(zeros, True, "vanilla")) == pytest.approx(math.log(2.0))
    assert float(gan_loss(torch.full((1, 1, 2, 2), 20.0), True, "vanilla")) < 1e-8
    with pytest.raises(ValueError, match="wgan"):
        gan_loss(zeros, True, "wgan")


def test_constant_then_linear_decay() -> None:
    factor = constant_then_linear_decay(2, 2)
    assert [factor(s) for s in range(6)] == pytest.approx([1.0, 1.0, 2 / 3, 1 / 3, 0.0, 0.0])
    with pytest.raises(ValueError, match="-1"):
        constant_then_linear_decay(-1, 3)


def _trainer(data: list[dict], max_epochs: int = 1, **kwargs) -> Pix2PixTrainer:
    torch.manual_seed(0)
    generator = Pix2PixUNetGenerator(num_downs=4, ngf=8, dropout=0.0)
    discriminator = PatchDiscriminator(spatial_dims=2, channels=8, in_channels=2, num_layers_d=2)
    return Pix2PixTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=DataLoader(Dataset(data), batch_size=2, shuffle=False),
        g_network=generator,
        g_optimizer=torch.optim.Adam(generator.parameters(), lr=2e-3, betas=(0.5, 0.999)),
        d_network=discriminator,
        d_optimizer=torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999)),
        **kwargs,
    )


def _pairs(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        label = torch.rand(1, 32, 32, generator=g)
        out.append({"image": 1.0 - label, "label": label})  # learn to invert the grey levels
    return out


def test_one_iteration_outputs_and_frozen_discriminator() -> None:
    trainer = _trainer(_pairs(2))
    d_params = list(trainer.d_network.parameters())
    seen: dict[str, object] = {}
    d_step, g_step = trainer.d_optimizer.step, trainer.g_optimizer.step

    def record_d_step(*a, **k):
        seen["d_grads"] = [p.grad.clone() for p in d_params]
        return d_step(*a, **k)

    def record_g_step(*a, **k):
        seen["requires_grad_in_g_step"] = any(p.requires_grad for p in d_params)
        seen["d_grads_at_g_step"] = [p.grad.clone() for p in d_params]
        return g_step(*a, **k)

    trainer.d_optimizer.step, trainer.g_optimizer.step = record_d_step, record_g_step
    trainer.run()
    out = trainer.state.output
    assert seen["requires_grad_in_g_step"] is False
    for before, after in zip(seen["d_grads"], seen["d_grads_at_g_step"], strict=True):
        torch.testing.assert_close(before, after)  # the generator step added nothing to the discriminator
    assert all(p.requires_grad for p in d_params)  # unfrozen again for the next iteration
    assert out["pred"].shape == out["label"].shape == (2, 1, 32, 32)
    assert out["l1"] == pytest.approx(float((out["pred"] - out["label"]).abs().mean()), rel=1e-5)
    assert out["g_loss"] == pytest.approx(out["g_adv"] + 100.0 * out["l1"], rel=1e-5)
    assert out["d_loss"] == pytest.approx(0.5 * (out["d_real"] + out["d_fake"]), rel=1e-5)


def test_training_reduces_l1() -> None:
    trainer = _trainer(_pairs(4), max_epochs=15, gan_mode="lsgan", lambda_l1=100.0)
    l1 = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: l1.append(e.state.output["l1"]))
    trainer.run()
    assert len(l1) == 30
    assert sum(l1[-4:]) / 4 < 0.75 * sum(l1[:4]) / 4  # about 0.63 seen with these seeds


def test_adversarial_weight_scales_the_adversarial_term() -> None:
    trainer = _trainer(_pairs(2), lambda_adv=0.25)
    trainer.run()
    out = trainer.state.output
    assert out["g_loss"] == pytest.approx(0.25 * out["g_adv"] + 100.0 * out["l1"], rel=1e-5)


def test_zero_adversarial_weight_trains_on_l1_alone_without_the_discriminator() -> None:
    trainer = _trainer(_pairs(4), max_epochs=3, lambda_adv=0.0)
    before = [p.detach().clone() for p in trainer.d_network.parameters()]
    calls = []
    trainer.d_network.register_forward_hook(lambda *a: calls.append(1))
    trainer.run()
    out = trainer.state.output
    assert not calls  # never run
    for old, new in zip(before, trainer.d_network.parameters(), strict=True):
        torch.testing.assert_close(old, new)  # never updated
    assert out["g_loss"] == pytest.approx(100.0 * out["l1"], rel=1e-5)
    assert out["g_adv"] == out["d_loss"] == 0.0


@pytest.mark.parametrize("kwargs", [{"gan_mode": "hinge"}, {"lambda_l1": -1.0}, {"lambda_adv": -0.5}])
def test_bad_settings_raise(kwargs: dict) -> None:
    (name,) = kwargs
    with pytest.raises(ValueError, match=f"^{name} must .*got '?{kwargs[name]}"):  # names what is wrong
        _trainer(_pairs(2), **kwargs)


def test_each_optimizer_has_its_own_grad_scaler_and_steps_read_like_pix2pix() -> None:
    trainer = _trainer(_pairs(2))
    assert trainer.g_scaler is not trainer.d_scaler
    image, label = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    pred = trainer.g_network(image)
    before = [p.detach().clone() for p in trainer.d_network.parameters()]
    d_out = trainer._discriminator_step(image, label, pred)
    assert set(d_out) == {"d_loss", "d_real", "d_fake"}
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.d_network.parameters(), strict=True))
    g_before = [p.detach().clone() for p in trainer.g_network.parameters()]
    g_out = trainer._generator_step(image, label, pred)
    assert g_out["g_loss"] == pytest.approx(g_out["g_adv"] + 100.0 * g_out["l1"], rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(g_before, trainer.g_network.parameters(), strict=True))
    assert all(p.requires_grad for p in trainer.d_network.parameters())
