"""What every embedded world shares: atomic folder export, reuse checks, content fingerprints, word vectors.

A world is exported as one folder holding a ``world.json`` (``version``, ``config``, ``files``, ``fingerprint``,
...). :func:`write_folder_atomically` builds it in a temporary sibling and renames it into place;
:func:`existing_world` says whether a folder already holds exactly that world (and refuses to overwrite anything
else with :class:`WorldExistsError`); :func:`world_fingerprint` / :func:`verify_world` hash its files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from unseen.io import file_sha256


class WorldExistsError(FileExistsError):
    """The output folder exists and holds something other than this exact world; nothing was overwritten."""


def write_folder_atomically(
    out_dir: Path, write: Callable[[Path], None], is_current: Callable[[], bool]
) -> Path:
    """Build a folder as a temporary sibling with ``write(tmp)`` and rename it to ``out_dir`` (never half-written).
    An empty ``out_dir`` is replaced; if the rename loses to a concurrent builder whose folder ``is_current()``,
    theirs is kept. On any error the temporary folder is removed."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        write(tmp)
        try:
            if out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()
            os.rename(tmp, out_dir)
        except OSError:
            if is_current():  # built concurrently by someone else: theirs is identical
                shutil.rmtree(tmp, ignore_errors=True)
                return out_dir
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def existing_world(
    out_dir: Path,
    kind: str,
    version: str,
    config: dict[str, Any],
    required: list[str] | tuple[str, ...],
    with_listed_files: bool = False,
) -> bool:
    """True if ``out_dir`` holds this exact, complete ``kind`` world (same ``version`` and ``config``, every
    ``required`` file, and with ``with_listed_files`` every file its world.json lists); False if it is missing or
    empty; :class:`WorldExistsError` if it holds anything else (never overwritten)."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise WorldExistsError(f"{out_dir}: exists and is not a folder; refusing to overwrite it")
    if not any(out_dir.iterdir()):
        return False
    meta_path = out_dir / "world.json"
    if not meta_path.is_file():
        raise WorldExistsError(
            f"{out_dir}: folder is not empty and holds no {kind} world (no world.json); "
            "refusing to overwrite it: choose another folder or remove it"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WorldExistsError(f"{meta_path}: unreadable world.json ({exc}); refusing to overwrite") from exc
    if meta.get("version") != version or meta.get("config") != config:
        raise WorldExistsError(
            f"{out_dir}: holds a different {kind} world (version {meta.get('version')!r}, config "
            f"{meta.get('config')}); refusing to overwrite it with {config}"
        )
    listed = meta.get("files", []) if with_listed_files else []
    missing = [p for p in [*required, *listed] if not (out_dir / p).is_file()]
    if missing:
        raise WorldExistsError(
            f"{out_dir}: incomplete {kind} world (missing {', '.join(missing[:5])}); remove it"
        )
    return True


def world_fingerprint(root: str | os.PathLike[str], files: list[str]) -> str:
    """SHA-256 over ``relative path + file SHA-256`` of ``files`` (sorted), relative to ``root``."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode())
        h.update(b"\0")
        h.update(file_sha256(Path(root) / rel).encode())
        h.update(b"\n")
    return h.hexdigest()


def load_world_meta(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``world.json`` of an exported world (version, config, counts, fingerprint, file list, ...)."""
    return json.loads((Path(root) / "world.json").read_text(encoding="utf-8"))


def verify_world(root: str | os.PathLike[str], unlisted: Iterable[str] = ()) -> str:
    """Recompute the content fingerprint of an exported world over the files its world.json lists plus
    ``unlisted`` (fingerprinted files the list leaves out); raise ``ValueError`` if it does not match."""
    root = Path(root)
    meta = load_world_meta(root)
    got = world_fingerprint(root, [*meta["files"], *unlisted])
    if got != meta["fingerprint"]:
        raise ValueError(
            f"{root}: content fingerprint {got} != recorded {meta['fingerprint']} (files were modified)"
        )
    return got


def word_vector(word: str, dim: int) -> np.ndarray:
    """A fixed pseudo-random ``dim``-d float64 vector of norm about 1 for a word (independent of every seed)."""
    seed = int.from_bytes(hashlib.sha256(f"unseen-word:{word}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim) / math.sqrt(dim)
