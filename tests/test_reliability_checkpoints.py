"""Checkpoints survive killed runs: atomic saves, the old file kept until the new one is written,
resume from the newest readable checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from test_bundle import _run_counting_iterations, _workflow, dataset_dir  # noqa: F401  (a fixture)

from usdespeckle.gan.checkpoints import AtomicCheckpointSaver, remove_stale_checkpoint_temporaries
from usdespeckle.runtime import bundle_utils


def _engine_with_saver(folder: Path, **saver_args) -> tuple[Engine, torch.nn.Module]:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = Engine(lambda engine, batch: None)
    saver = AtomicCheckpointSaver(  # several objects, as the bundle's: files named {prefix}_checkpoint_...
        save_dir=str(folder),
        save_dict={"model": model, "optimizer": optimizer},
        file_prefix="denoiser",
        **saver_args,
    )
    saver.attach(engine)
    return engine, model


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_latest_checkpoint_skips_a_truncated_newest_one(tmp_path):
    for epoch in (1, 2, 3):
        torch.save(
            {"model": {"w": torch.full((4,), float(epoch))}},
            tmp_path / f"denoiser_checkpoint_epoch={epoch}.pt",
        )
    _truncate(tmp_path / "denoiser_checkpoint_epoch=3.pt")
    with pytest.warns(RuntimeWarning, match="epoch=3.pt cannot be read"):
        found = bundle_utils.latest_checkpoint(tmp_path, "denoiser")
    assert found == str(tmp_path / "denoiser_checkpoint_epoch=2.pt")
    (tmp_path / "denoiser_checkpoint_epoch=2.pt").write_bytes(b"")  # empty: a kill before any byte
    (tmp_path / "denoiser_checkpoint_epoch=1.pt").write_bytes(b"garbage" * 10)
    with pytest.warns(RuntimeWarning):
        assert bundle_utils.latest_checkpoint(tmp_path, "denoiser") is None  # nothing readable: a fresh run


def test_saver_keeps_one_complete_checkpoint_and_no_temporaries(tmp_path):
    engine, model = _engine_with_saver(tmp_path, save_interval=1, n_saved=1, epoch_level=True)
    engine.run([0, 1], max_epochs=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["denoiser_checkpoint_epoch=3.pt"]
    state = torch.load(tmp_path / "denoiser_checkpoint_epoch=3.pt", weights_only=True)
    torch.testing.assert_close(
        state["weight"] if "weight" in state else state["model"]["weight"], model.weight
    )


def test_a_save_that_fails_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    engine, _ = _engine_with_saver(tmp_path, save_interval=1, n_saved=1, epoch_level=True)
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *args, **kwargs):  # the second save dies half-way, like a full disk
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        engine.run([0, 1], max_epochs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["denoiser_checkpoint_epoch=1.pt"]
    assert bundle_utils.checkpoint_problem(tmp_path / "denoiser_checkpoint_epoch=1.pt") is None


def test_temporaries_of_killed_saves_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".denoiser_checkpoint_epoch=4.pt.{dead.pid}.tmp"
    stale.write_bytes(b"half")
    running = tmp_path / f".denoiser_checkpoint_epoch=5.pt.{os.getpid()}.tmp"
    running.write_bytes(b"being written")
    _engine_with_saver(tmp_path, save_interval=1)
    assert not stale.exists()
    assert running.exists()
    assert remove_stale_checkpoint_temporaries(tmp_path / "missing") == []


def test_final_and_key_metric_files_are_written_atomically_too(tmp_path):
    model = torch.nn.Linear(3, 2)
    engine = Engine(lambda engine, batch: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def score(engine):
        engine.state.metrics = {"psnr": float(engine.state.epoch)}

    AtomicCheckpointSaver(
        save_dir=str(tmp_path),
        save_dict={"model": model},
        save_final=True,
        final_filename="model_final.pt",
        save_key_metric=True,
        key_metric_name="psnr",
        key_metric_filename="model.pt",
    ).attach(engine)
    engine.run([0], max_epochs=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model_final.pt"]
    for name in ("model.pt", "model_final.pt"):
        assert bundle_utils.checkpoint_problem(tmp_path / name) is None


@pytest.mark.slow  # two tiny trainings through train.json: 30-60 s on a loaded 2-core machine
def test_training_resumes_from_the_newest_readable_checkpoint(tmp_path: Path, dataset_dir: Path) -> None:  # noqa: F811
    first = _run_counting_iterations(
        _workflow("train.json", tmp_path, dataset_dir, num_epochs_constant=1, num_epochs_decay=0)
    )
    assert first == list(range(1, 11))  # ten iterations per tiny epoch (tests/test_bundle.py)
    models = tmp_path / "models"
    assert not [p.name for p in models.iterdir() if p.name.startswith(".")]  # no temporary left
    # a newer checkpoint cut short (a run killed while writing it, with a non-atomic writer)
    good = models / "denoiser_checkpoint_epoch=1.pt"
    bad = models / "denoiser_checkpoint_epoch=2.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 3])

    def resume():
        wf = _workflow("train.json", tmp_path, dataset_dir, num_epochs_constant=1, num_epochs_decay=1)
        return wf, wf.parser.get_parsed_content("resume_path")

    with pytest.warns(RuntimeWarning, match=r"epoch=2\.pt cannot be read"):
        wf, resume_path = resume()
    assert resume_path == str(good)
    assert _run_counting_iterations(wf) == list(range(11, 21))  # picked up after epoch 1
