"""What every embedded world shares: atomic folder export, reuse checks, content fingerprints, word vectors.

A world is exported as one folder holding a ``world.json`` (``version``, ``config``, ``files``, ``fingerprint``,
``pixel_fingerprint``, ``versions``, ...). :func:`write_folder_atomically` builds it in a temporary sibling and
renames it into place; :func:`existing_world` says whether a folder already holds exactly that world (and refuses to
overwrite anything else with :class:`WorldExistsError`); :func:`world_record` fingerprints everything a new world
holds; :func:`world_fingerprint` / :func:`verify_world` hash its files.

Two fingerprints, because they answer two questions. ``fingerprint`` hashes the bytes of every file: were the files
modified? ``pixel_fingerprint`` hashes the decoded pixels of its PNG images only: did the render stack draw the same
images? (It does not move when only the PNG encoder's compression does.) ``versions`` records what drew the world
(:func:`unseen.io.versions`); a world reused under another Pillow is re-drawn in part and compared
(:func:`check_render_stack`), since Pillow releases have rasterised the same polygons differently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unseen.io import file_sha256, versions

log = logging.getLogger("unseen")

#: Re-renders a few of a world's images: relative path in the world -> the image drawn now.
Samples = Callable[[], dict[str, Image.Image]]


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
    samples: Samples | None = None,
) -> bool:
    """True if ``out_dir`` holds this exact, complete ``kind`` world (same ``version`` and ``config``, every
    ``required`` file, and with ``with_listed_files`` every file its world.json lists); False if it is missing or
    empty; :class:`WorldExistsError` if it holds anything else (never overwritten). A world that is reused is
    checked against the installed Pillow with ``samples`` (:func:`check_render_stack`)."""
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
    if samples is not None:
        check_render_stack(out_dir, meta, samples)
    return True


def check_render_stack(root: Path, meta: dict[str, Any], samples: Samples) -> bool | None:
    """Compare a reused world with what the installed Pillow draws; None if it recorded this very Pillow.

    Otherwise the ``samples`` images are drawn again and compared pixel for pixel with the stored ones; the result
    is returned and logged: a warning when the recorded Pillow differs (saying whether this one draws the same
    pixels) or when a world that recorded no version (written before versions were recorded) draws differently.
    Never an error: the stored world is still what earlier results were computed on."""
    import PIL

    recorded = (meta.get("versions") or {}).get("Pillow")
    if recorded == PIL.__version__:
        return None
    drawn = samples()
    differ = []
    for rel, image in sorted(drawn.items()):
        try:
            with Image.open(root / rel) as stored:
                same = np.array_equal(np.asarray(stored.convert("RGB")), np.asarray(image.convert("RGB")))
        except OSError:
            same = False
        if not same:
            differ.append(rel)
    verdict = (
        f"{len(differ)} of {len(drawn)} re-drawn sample images differ (e.g. {differ[0]}): a fresh render with "
        "this Pillow gives other pixels, so results on this world and on a re-rendered one will not match "
        f"(install the Pillow that rendered it, or remove {root} to re-render it)"
        if differ
        else f"all {len(drawn)} re-drawn sample images are pixel-identical"
    )
    if recorded is None:
        (log.warning if differ else log.info)(
            "%s: world.json records no Pillow version (written before versions were recorded); Pillow %s: %s",
            root,
            PIL.__version__,
            verdict,
        )
    else:
        log.warning(
            "%s: this world was rendered with Pillow %s, the installed Pillow is %s: %s",
            root,
            recorded,
            PIL.__version__,
            verdict,
        )
    return not differ


def content_files(root: str | os.PathLike[str]) -> list[str]:
    """Every file under ``root`` except its ``world.json``, as sorted relative POSIX paths."""
    root = Path(root)
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p != root / "world.json"
    )


def pixel_fingerprint(root: str | os.PathLike[str], files: Iterable[str]) -> str:
    """SHA-256 over the decoded pixels (mode, size, raw bytes) of the ``.png`` files among ``files`` (sorted, each
    with its relative path): what the renderer drew, whatever the PNG encoder made of it."""
    h = hashlib.sha256()
    for rel in sorted(f for f in files if f.lower().endswith(".png")):
        with Image.open(Path(root) / rel) as im:
            im.load()
            h.update(f"{rel}\0{im.mode}\0{im.size[0]}x{im.size[1]}\0".encode())
            h.update(im.tobytes())
    return h.hexdigest()


def world_record(root: str | os.PathLike[str], listed: Iterable[str]) -> dict[str, Any]:
    """The reproducibility part of a new world's world.json: ``fingerprint`` (every file's bytes),
    ``pixel_fingerprint`` and ``versions``. ``listed`` = the files the builder wrote; a file under ``root`` that
    it does not list (or a listed one that is missing) is a builder bug: the fingerprint must cover everything."""
    found = content_files(root)
    want = sorted(set(listed))
    if found != want:
        extra, missing = sorted(set(found) - set(want)), sorted(set(want) - set(found))
        raise AssertionError(f"{root}: files not listed {extra[:5]}, listed but missing {missing[:5]}")
    return {
        "fingerprint": world_fingerprint(root, found),
        "pixel_fingerprint": pixel_fingerprint(root, found),
        "versions": versions(),
    }


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


def recorded_fingerprints(root: str | os.PathLike[str]) -> dict[str, str]:
    """The content fingerprints a world recorded at rendering (for results.json: which pixels a table came from)."""
    meta = load_world_meta(root)
    return {k: meta[k] for k in ("fingerprint", "pixel_fingerprint") if k in meta}


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
