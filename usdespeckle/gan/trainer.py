"""The conditional pix2pix trainer: a MONAI ``Trainer`` that overrides only the iteration.

MONAI's ``GanTrainer`` generates from latents and ``AdversarialTrainer`` shows the discriminator the
targets alone; pix2pix conditions the discriminator on the input image. One iteration reads like the
paper (Isola et al. 2017, doi:10.1109/CVPR.2017.632)::

    pred = generator(image)
    discriminator step: loss on cat(image, label) (real) and cat(image, pred.detach()) (fake)
    generator step (discriminator frozen): adversarial(cat(image, pred), real) + lambda_l1 * |pred - label|

Everything else (data, handlers, checkpoints, validation, distributed training) is MONAI's ``Workflow``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from monai.engines import Trainer
from monai.engines.utils import default_metric_cmp_fn, default_prepare_batch
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import Transform
from monai.utils.enums import CommonKeys
from torch import nn
from torch.optim.optimizer import Optimizer

__all__ = ["Pix2PixTrainer", "constant_then_linear_decay", "gan_loss", "set_requires_grad"]

GAN_MODES = ("lsgan", "vanilla")


def _unwrap(network: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel/DataParallel, or the network itself."""
    return (
        network.module
        if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel))
        else network
    )


def _logits(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """MONAI's PatchDiscriminator returns its intermediate features too; the logit map is the last."""
    return output[-1] if isinstance(output, (list, tuple)) else output


def gan_loss(logits: torch.Tensor, target_is_real: bool, gan_mode: str = "lsgan") -> torch.Tensor:
    """The adversarial loss of pix2pix on a discriminator's logit map.

    Args:
        logits: (B, 1, h, w) PatchGAN outputs (unbounded).
        target_is_real: whether the target label is "real" (1) or "fake" (0).
        gan_mode: "lsgan" (mean squared error to 0/1, pix2pix's ``--gan_mode lsgan``) or "vanilla"
            (binary cross-entropy with logits, the pix2pix default).

    Returns:
        The scalar loss.

    Raises:
        ValueError: unknown gan_mode.
    """
    target = torch.full_like(logits, 1.0 if target_is_real else 0.0)
    if gan_mode == "lsgan":
        return nn.functional.mse_loss(logits, target)
    if gan_mode == "vanilla":
        return nn.functional.binary_cross_entropy_with_logits(logits, target)
    raise ValueError(f"gan_mode must be one of {GAN_MODES}, got {gan_mode!r}.")


def constant_then_linear_decay(constant_steps: int, decay_steps: int) -> Callable[[int], float]:
    """LR multiplier for ``torch.optim.lr_scheduler.LambdaLR``: constant, then linear decay.

    pix2pix's "linear" policy: the factor is 1 for ``constant_steps`` scheduler steps (epochs when the
    scheduler is stepped per epoch), then falls linearly to ``1 / (decay_steps + 1)`` at the last step,
    and stays at 0 beyond. A plain function, so that LambdaLR's ``state_dict`` does not store it: a
    resumed run takes the schedule from its config, and the step count from the checkpoint.

    Args:
        constant_steps: steps at the initial learning rate, >= 0.
        decay_steps: steps of linear decay, >= 0.

    Returns:
        ``factor(step) -> float`` in [0, 1].

    Raises:
        ValueError: a negative number of steps.
    """
    if constant_steps < 0 or decay_steps < 0:
        raise ValueError(
            f"constant_steps and decay_steps must be >= 0, got {constant_steps} and {decay_steps}."
        )

    def factor(step: int) -> float:
        return max(0.0, 1.0 - max(0, step + 1 - constant_steps) / float(decay_steps + 1))

    return factor


class Pix2PixTrainer(Trainer):
    """Conditional GAN (pix2pix) training of an image-to-image generator against a PatchGAN.

    ``engine.state.output`` of each iteration is a dict with ``image``, ``label``, ``pred`` (tensors
    on the device, ``pred`` detached) and the floats ``g_loss`` (total generator loss), ``g_adv``
    (its adversarial part), ``l1`` (the unweighted L1 term), ``d_loss``, ``d_real`` and ``d_fake``
    (the discriminator's mean loss on real and fake pairs). Use e.g.
    ``monai.handlers.from_engine(["g_loss", "d_loss"], first=True)`` as a handler's output_transform.

    Args:
        device: the device to train on.
        max_epochs: number of epochs to run.
        train_data_loader: yields dict batches with ``image`` (input) and ``label`` (target),
            (B, 1, H, W) in [0, 1], H and W multiples of the generator's ``2**num_downs``.
        g_network: the generator, (B, 1, H, W) -> (B, 1, H, W) in [0, 1].
        g_optimizer: optimizer of the generator's parameters.
        d_network: the discriminator on ``cat(image, label_or_pred)`` (2 channels); may return a list
            whose last element is the logit map (MONAI's PatchDiscriminator).
        d_optimizer: optimizer of the discriminator's parameters.
        lambda_l1: weight of the L1 term in the generator loss (100 in pix2pix).
        lambda_adv: weight of the adversarial term in the generator loss (1 in pix2pix). 0 trains
            the generator on L1 alone and skips the discriminator (its losses are reported as 0).
        gan_mode: "lsgan" or "vanilla" (BCE with logits), see :func:`gan_loss`.
        epoch_length: iterations per epoch; defaults to ``len(train_data_loader)``.
        non_blocking: asynchronous host-to-device copies.
        prepare_batch: parses ``(image, label)`` from a batch (MONAI's default reads the dict keys).
        iteration_update: replaces :meth:`_iteration` when given (MONAI's hook).
        g_inferer: runs the generator (default: SimpleInferer).
        postprocessing: transforms applied to the output (MONAI's Workflow).
        key_train_metric, additional_metrics, metric_cmp_fn: as in MONAI's Workflow.
        train_handlers: MONAI/ignite handlers to attach.
        amp: mixed precision (CUDA only).
        event_names, event_to_attr: extra ignite events, as in MONAI's Workflow.
        decollate: decollate outputs into a list of per-sample dicts (off by default so that the
            losses stay scalars).
        optim_set_to_none: zero gradients by setting them to None.
        to_kwargs, amp_kwargs: passed to ``Tensor.to`` and ``torch.autocast``.

    Raises:
        ValueError: unknown gan_mode or negative lambda_l1.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        g_network: nn.Module,
        g_optimizer: Optimizer,
        d_network: nn.Module,
        d_optimizer: Optimizer,
        lambda_l1: float = 100.0,
        gan_mode: str = "lsgan",
        lambda_adv: float = 1.0,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        iteration_update: Callable[[Any, Any], Any] | None = None,
        g_inferer: Inferer | None = None,
        postprocessing: Transform | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = False,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        if gan_mode not in GAN_MODES:
            raise ValueError(f"gan_mode must be one of {GAN_MODES}, got {gan_mode!r}.")
        if lambda_l1 < 0:
            raise ValueError(f"lambda_l1 must be >= 0, got {lambda_l1}; pix2pix uses 100.")
        if lambda_adv < 0:
            raise ValueError(f"lambda_adv must be >= 0, got {lambda_adv}; pix2pix uses 1.")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=train_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.g_network = g_network
        self.g_optimizer = g_optimizer
        self.d_network = d_network
        self.d_optimizer = d_optimizer
        self.lambda_l1 = float(lambda_l1)
        self.lambda_adv = float(lambda_adv)
        self.gan_mode = gan_mode
        self.g_inferer = SimpleInferer() if g_inferer is None else g_inferer
        self.optim_set_to_none = optim_set_to_none
        # One GradScaler per optimizer (as MONAI's AdversarialTrainer): each tracks its own overflow.
        # Disabled (a pass-through) unless AMP runs on CUDA; config checkpoints save both.
        use_scaler = bool(amp) and torch.cuda.is_available()
        self.g_scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.d_scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    def _iteration(self, engine: Pix2PixTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        """One pix2pix step, as the paper's code reads: ``backward_D``, then ``backward_G``.

        Args:
            engine: this trainer (ignite passes it).
            batchdata: a dict batch with ``image`` and ``label``.

        Returns:
            The output dict described in the class docstring.

        Raises:
            ValueError: no batch.
        """
        if batchdata is None:
            raise ValueError("must provide batch data for the current iteration, got None.")
        image, label = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs
        )
        engine.g_network.train()
        engine.d_network.train()
        with torch.autocast("cuda", **engine.amp_kwargs, enabled=engine.amp):
            pred = engine.g_inferer(image, engine.g_network)
        if engine.lambda_adv == 0.0:  # L1 alone: no discriminator to train or to fool
            d_losses = {"d_loss": 0.0, "d_real": 0.0, "d_fake": 0.0}
        else:
            d_losses = engine._discriminator_step(image, label, pred)
        g_losses = engine._generator_step(image, label, pred)
        return {
            CommonKeys.IMAGE: image,
            CommonKeys.LABEL: label,
            CommonKeys.PRED: pred.detach(),
            CommonKeys.LOSS: g_losses["g_loss"],
            **g_losses,
            **d_losses,
        }

    def _discriminator_step(self, image: torch.Tensor, label: torch.Tensor, pred: torch.Tensor) -> dict:
        """Update the discriminator: real pairs -> 1, fake pairs (generator detached) -> 0.

        The fake pair goes through the unwrapped module so that a DistributedDataParallel
        discriminator runs one synchronised forward/backward per step; both losses share one
        backward, so gradients are summed before DDP's all-reduce.

        Returns:
            ``d_loss`` (the mean of both), ``d_real`` and ``d_fake`` as floats.
        """
        set_requires_grad(self.d_network, True)
        self.d_optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        with torch.autocast("cuda", **self.amp_kwargs, enabled=self.amp):
            real_logits = _logits(self.d_network(torch.cat([image, label], dim=1)))
            fake_logits = _logits(_unwrap(self.d_network)(torch.cat([image, pred.detach()], dim=1)))
            d_real = gan_loss(real_logits, True, self.gan_mode)
            d_fake = gan_loss(fake_logits, False, self.gan_mode)
            d_loss = 0.5 * (d_real + d_fake)
        self._backward_step(d_loss, self.d_optimizer, self.d_scaler)
        return {"d_loss": d_loss.item(), "d_real": d_real.item(), "d_fake": d_fake.item()}

    def _generator_step(self, image: torch.Tensor, label: torch.Tensor, pred: torch.Tensor) -> dict:
        """Update the generator, the discriminator frozen: fool it and stay close to the label in L1.

        Returns:
            ``g_loss`` (``lambda_adv * g_adv + lambda_l1 * l1``), ``g_adv`` and the unweighted ``l1``.
        """
        self.g_optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        with torch.autocast("cuda", **self.amp_kwargs, enabled=self.amp):
            l1 = nn.functional.l1_loss(pred, label)
            if self.lambda_adv == 0.0:
                g_adv = torch.zeros((), device=pred.device)
            else:
                set_requires_grad(self.d_network, False)
                g_logits = _logits(_unwrap(self.d_network)(torch.cat([image, pred], dim=1)))
                g_adv = gan_loss(g_logits, True, self.gan_mode)
            g_loss = self.lambda_adv * g_adv + self.lambda_l1 * l1
        self._backward_step(g_loss, self.g_optimizer, self.g_scaler)
        set_requires_grad(self.d_network, True)
        return {"g_loss": g_loss.item(), "g_adv": g_adv.item(), "l1": l1.item()}

    @staticmethod
    def _backward_step(loss: torch.Tensor, optimizer: Optimizer, scaler: torch.amp.GradScaler) -> None:
        """Backward and optimizer step through this optimizer's GradScaler (a no-op unless AMP on CUDA)."""
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()


def set_requires_grad(network: nn.Module, requires_grad: bool) -> None:
    """Freeze (False) or unfreeze (True) every parameter of ``network`` (pix2pix's helper)."""
    for parameter in network.parameters():
        parameter.requires_grad_(requires_grad)
