"""Helpers the MONAI bundle configs call where JSON cannot express it: resume files and checksums."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

from usdespeckle.runtime.atomic import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "WEIGHT_FILES",
    "check_weights",
    "checkpoint_problem",
    "default_bundle_root",
    "latest_checkpoint",
    "read_metadata",
    "sha256_file",
    "update_checksums",
    "verify_checksums",
]

# The shipped files whose sha256 metadata.json records, relative to the bundle root.
WEIGHT_FILES = ("models/model.pt", "models/model.ts", "models/model.onnx", "models/simulator.pt")
_CHECKSUM_KEY = "weights_sha256"


def default_bundle_root() -> Path:
    """The bundle folder, found by this rule.

    1. ``$USDESPECKLE_BUNDLE`` if set;
    2. ``monai_bundle/`` beside the package, if it holds ``configs/metadata.json`` (a source
       checkout or an editable install);
    3. ``usdespeckle/monai_bundle/`` inside the installed package (a wheel: its configs, model.ts
       and model.onnx are package data).
    """
    env = os.environ.get("USDESPECKLE_BUNDLE")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parents[1]  # usdespeckle/ (this file is in runtime/)
    checkout = package.parent / "monai_bundle"
    return checkout if (checkout / "configs" / "metadata.json").is_file() else package / "monai_bundle"


def checkpoint_problem(path: str | Path) -> str | None:
    """Why a checkpoint file cannot be resumed from, or None when it reads.

    ``torch.save`` writes a zip archive; every member's CRC is checked (a truncated file has no
    central directory, a damaged one a bad CRC) without unpickling. A file in torch's legacy format
    is loaded with ``weights_only=True`` instead.

    Args:
        path: a ``.pt`` checkpoint.

    Returns:
        A short reason, or None.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            return f"member {bad} is corrupt" if bad else None
        import torch

        torch.load(path, map_location="cpu", weights_only=True)
        return None
    except Exception as err:  # any failure to read means: do not resume from it
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:120] if str(err).strip() else ''}"


def latest_checkpoint(directory: str | Path, prefix: str) -> str | None:
    """The newest readable checkpoint MONAI's CheckpointSaver wrote with ``file_prefix=prefix``.

    CheckpointSaver names interval checkpoints ``{prefix}_checkpoint_epoch={n}.pt`` (or
    ``..._iteration={n}.pt``); the readable one with the largest ``n`` is returned. A newer one
    that does not read (a run killed while saving it) is skipped with a warning, so training
    resumes from the one before.

    Args:
        directory: folder of the checkpoints (it may not exist yet).
        prefix: the saver's ``file_prefix`` (e.g. "denoiser" or "simulator").

    Returns:
        The path as a string, or None when there is none (a fresh run).
    """
    folder = Path(directory)
    if not folder.is_dir():
        return None
    pattern = re.compile(rf"^{re.escape(prefix)}_checkpoint_(?:epoch|iteration)=(\d+)\.pt$")
    found = sorted(
        ((int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name))), reverse=True
    )
    for _, path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        message = f"checkpoint {path} cannot be read ({problem}); resuming from an older one if any"
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        logger.warning(message)
    return None


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks of ``chunk_bytes`` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _metadata_path(bundle_root: str | Path) -> Path:
    path = Path(bundle_root) / "configs" / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"no metadata at {path}; pass the bundle folder (the one holding configs/).")
    return path


def update_checksums(bundle_root: str | Path) -> dict[str, str | None]:
    """Write the sha256 of each weight file present into ``configs/metadata.json``.

    Files of :data:`WEIGHT_FILES` that are absent are recorded as null.

    Args:
        bundle_root: the bundle folder.

    Returns:
        The ``{relative path: sha256 or None}`` mapping written under ``"weights_sha256"``.

    Raises:
        FileNotFoundError: no ``configs/metadata.json`` under bundle_root.
    """
    meta_path = _metadata_path(bundle_root)
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    sums: dict[str, str | None] = {}
    for rel in WEIGHT_FILES:
        path = Path(bundle_root) / rel
        sums[rel] = sha256_file(path) if path.is_file() else None
    meta[_CHECKSUM_KEY] = sums
    atomic_write(
        meta_path, json.dumps(meta, indent=4) + "\n"
    )  # a half-written metadata.json loses every checksum
    return sums


def read_metadata(bundle_root: str | Path) -> dict[str, Any]:
    """The bundle's ``configs/metadata.json`` as a dict.

    Raises:
        FileNotFoundError: no metadata under ``bundle_root``.
        ValueError: the file is not JSON, or not a JSON object.
    """
    meta_path = _metadata_path(bundle_root)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path} is not valid JSON: {err}; restore the bundle's metadata") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} holds a {type(meta).__name__}, not a JSON object of bundle metadata")
    return meta


def check_weights(bundle_root: str | Path, rel: str, metadata: dict[str, Any] | None = None) -> None:
    """Refuse the weight file ``rel`` unless its sha256 is the one ``metadata.json`` records.

    Args:
        bundle_root: the bundle folder.
        rel: the file, relative to the bundle (e.g. ``"models/model.ts"``).
        metadata: the bundle's metadata when already read (:func:`read_metadata`).

    Raises:
        ValueError: the sha256 differs, or none is recorded for ``rel``; as :func:`verify_checksums`.
    """
    if verify_checksums(bundle_root, files=(rel,), metadata=metadata)[rel] != "ok":
        raise ValueError(
            f'{_metadata_path(bundle_root)} records no sha256 for "{rel}" (no {_CHECKSUM_KEY} entry); '
            "re-export the bundle so the weights can be checked"
        )


def verify_checksums(
    bundle_root: str | Path,
    require_all: bool = False,
    files: tuple[str, ...] = WEIGHT_FILES,
    metadata: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Check the weight files against the sha256 recorded in ``configs/metadata.json``.

    Args:
        bundle_root: the bundle folder.
        require_all: also fail when a file with a recorded checksum is missing.
        files: the files to check, relative to the bundle (default: every shipped weight file).
        metadata: the bundle's metadata when already read (:func:`read_metadata`); read here if None.

    Returns:
        ``{relative path: "ok" | "absent" | "unrecorded"}`` for each of ``files``.

    Raises:
        FileNotFoundError: no metadata, or (require_all) a recorded file is missing.
        ValueError: a file's sha256 differs from the recorded one, or the metadata is not a JSON
            object with a ``weights_sha256`` mapping.
    """
    meta_path = _metadata_path(bundle_root)
    meta = read_metadata(bundle_root) if metadata is None else metadata
    recorded = meta.get(_CHECKSUM_KEY) or {}
    if not isinstance(recorded, dict) or not all(isinstance(v, str) or v is None for v in recorded.values()):
        raise ValueError(
            f'{meta_path}: "{_CHECKSUM_KEY}" must map file names to sha256 strings, got {recorded!r:.100}; '
            "restore the bundle or run usdespeckle.runtime.bundle_utils.update_checksums"
        )
    result: dict[str, str] = {}
    for rel in files:
        path = Path(bundle_root) / rel
        expected = recorded.get(rel)
        if not path.is_file():
            if require_all and expected:
                raise FileNotFoundError(f"{path} is missing but metadata.json records sha256 {expected}.")
            result[rel] = "absent"
        elif not expected:
            result[rel] = "unrecorded"
        else:
            actual = sha256_file(path)
            if actual != expected:
                raise ValueError(
                    f"{path} has sha256 {actual}, metadata.json records {expected}; the file changed or is "
                    "corrupt. Restore it, or run usdespeckle.runtime.bundle_utils.update_checksums if the change "
                    "is intended."
                )
            result[rel] = "ok"
    return result


def echogenicity_pairs(dataset_dir: str | Path, datalist: str, split: str) -> list[dict]:
    """The physics-simulated B-mode pairs of a simulator datalist, as denoiser training items.

    Each ``{"image": B-mode, "echogenicity": map, ...}`` entry of ``datalist`` (written by
    ``usdespeckle prepare-data``) becomes ``{"image": B-mode, "label": map, ...}``: the speckle-free
    map the B-mode was simulated from is the denoiser's target.

    Args:
        dataset_dir: folder holding the datalist; paths in it are relative to this folder.
        datalist: file name of the datalist, e.g. ``datalist_simulator.json``.
        split: ``training``, ``validation`` or ``test``.

    Returns:
        Items with absolute ``image`` and ``label`` paths and the entries' other keys.
    """
    from monai.data import load_decathlon_datalist

    entries = load_decathlon_datalist(
        str(Path(dataset_dir) / datalist), True, split, base_dir=str(dataset_dir)
    )
    return [
        {**{k: v for k, v in d.items() if k != "echogenicity"}, "label": d["echogenicity"]} for d in entries
    ]


def key_items(
    dataset_dir: str | Path, datalist: str, split: str, source_key: str, target_key: str, repeats: int = 1
) -> list[dict]:
    """One datalist key's files as ``{target_key: absolute path}`` items, repeated ``repeats`` times.

    Datasets whose items carry other keys (masks, regions, sources) cannot be concatenated and
    batched with others; this keeps only the file a training config reads. Repeating a small list
    (the real B-mode frames, say) weights it in a concatenation; random crops make the repeats differ.

    Args:
        dataset_dir: folder holding the datalist; paths in it are relative to this folder.
        datalist: file name of the datalist, e.g. ``datalist_real_bmode.json``.
        split: ``training``, ``validation`` or ``test``.
        source_key: the key to read in each entry (``image``, ``label``, ``echogenicity``).
        target_key: the key it gets in the returned items.
        repeats: how many times the list is repeated (>= 1).

    Returns:
        ``repeats * len(entries)`` items, each ``{target_key: path}``.

    Raises:
        ValueError: repeats < 1, or an entry lacks ``source_key``.
    """
    import json

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1; got {repeats}.")
    entries = json.loads((Path(dataset_dir) / datalist).read_text(encoding="utf-8")).get(split, [])
    missing = [e for e in entries if source_key not in e]
    if missing:
        raise ValueError(f"{datalist} {split}: {len(missing)} entries have no {source_key!r} key.")
    return [{target_key: str(Path(dataset_dir) / e[source_key])} for e in entries] * int(repeats)
