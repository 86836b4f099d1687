"""Safe loading and atomic writing.

Everything a user hands us from the internet (pickles, checkpoints) is loaded without executing code:
``safe_pickle_load`` rebuilds numpy arrays and plain Python containers only, ``load_torch`` always uses
``weights_only=True``. Everything we write goes to a temporary file in the same folder and is renamed
into place, so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import pickle
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class UnsafeFileError(ValueError):
    """A file asked to import or call something that is not on the allow-list."""


class DataFormatError(ValueError):
    """A data file is missing, malformed, or inconsistent. The message names the file and the field."""


# Globals a numpy-array pickle legitimately needs, across numpy 1.x / 2.x module layouts.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {}


def _allow(module: str, name: str, obj: Any) -> None:
    _ALLOWED_GLOBALS[(module, name)] = obj


def _populate_allowlist() -> None:
    import importlib

    core = importlib.import_module("numpy._core" if hasattr(np, "_core") else "numpy.core")
    multiarray = importlib.import_module(core.__name__ + ".multiarray")
    numeric = importlib.import_module(core.__name__ + ".numeric")
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        _allow(mod, "_reconstruct", multiarray._reconstruct)
        _allow(mod, "scalar", multiarray.scalar)
    for mod in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
        _allow(mod, "ndarray", np.ndarray)
        _allow(mod, "dtype", np.dtype)
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        _allow(mod, "_frombuffer", getattr(numeric, "_frombuffer", _frombuffer))
    # numpy >= 1.25 pickles dtypes as numpy.dtypes.Float64DType etc.
    try:
        import numpy.dtypes as npd

        for name in dir(npd):
            if name.endswith("DType"):
                _allow("numpy.dtypes", name, getattr(npd, name))
    except ImportError:  # pragma: no cover - old numpy
        pass
    _allow("collections", "OrderedDict", __import__("collections").OrderedDict)
    _allow("builtins", "list", list)
    _allow("builtins", "dict", dict)
    _allow("builtins", "tuple", tuple)
    _allow("builtins", "set", set)
    _allow("builtins", "frozenset", frozenset)
    _allow("builtins", "bytearray", bytearray)
    _allow("_codecs", "encode", __import__("codecs").encode)


def _frombuffer(buf: bytes, dtype: Any, shape: Any, order: Any) -> np.ndarray:  # pragma: no cover
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if not _ALLOWED_GLOBALS:
            _populate_allowlist()
        obj = _ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise UnsafeFileError(
                f"{self._source}: refusing to load: the pickle asks for '{module}.{name}', but only numpy "
                "arrays and plain containers may be loaded (convert the file to .npy/.npz if it is yours)"
            )
        return obj


def safe_pickle_load(path: str | os.PathLike[str] | bytes) -> Any:
    """Load a pickle that may only contain numpy arrays, numpy scalars and plain Python containers.

    ``path`` may also be the raw bytes of a pickle. Anything else (a class, a function, ``os.system``)
    raises :class:`UnsafeFileError` naming the global it asked for; nothing is executed.
    """
    if isinstance(path, bytes):
        data, source = path, "<bytes>"
    else:
        source = str(path)
        if not Path(path).is_file():
            raise DataFormatError(f"{source}: file not found")
        data = Path(path).read_bytes()
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), source).load()
    except UnsafeFileError:
        raise
    except Exception as exc:  # corrupt / truncated / not a pickle
        raise DataFormatError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from exc


def load_torch(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors and plain containers only)."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as exc:
        raise DataFormatError(f"{path}: file not found") from exc
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(f"{path}: refusing to load: {exc}".split("\n")[0]) from exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def append_jsonl(path: str | os.PathLike[str], obj: Any) -> None:
    """Append one JSON line (flushed + fsynced: a killed run keeps every line it finished)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, default=_json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


def save_safetensors(
    path: str | os.PathLike[str], tensors: dict[str, Any], metadata: dict[str, str] | None = None
) -> None:
    """Write tensors as safetensors, atomically. Tensors are made contiguous CPU copies."""
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # sorted metadata: the same tensors and metadata give the same file bytes (hashes can be compared)
    meta = dict(sorted(metadata.items())) if metadata else None
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=meta)
        _fsync(tmp)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def load_safetensors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Tensors of a safetensors file; a missing, truncated or foreign file is a :class:`DataFormatError`."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise DataFormatError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError (truncated header, not safetensors), OSError
        msg = str(exc).strip().split("\n")[0]
        raise DataFormatError(f"{path}: not a complete safetensors file ({msg})") from None


def safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata of a safetensors file (empty if it has none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise DataFormatError(f"{path}: not a complete safetensors file ({exc})") from None


def read_image(path: str | os.PathLike[str]) -> Any:
    """The one guarded image read: a fully decoded RGB PIL image, or a :class:`DataFormatError` that names the
    file (missing, empty, not an image, truncated, or over Pillow's decompression-bomb limit)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataFormatError(f"{path}: image not found") from None
    except Image.DecompressionBombError as exc:
        raise DataFormatError(f"{path}: refused, image too large ({exc})".split(" DOS")[0]) from None
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError) as exc:
        msg = str(exc).split("\n")[0]
        raise DataFormatError(f"{path}: image unreadable ({type(exc).__name__}: {msg})") from None


def load_npy(path: str | os.PathLike[str], what: str = "array") -> np.ndarray:
    """The one guarded ``.npy`` read (no pickles): errors name the file and what it should hold."""
    try:
        return np.load(Path(path), allow_pickle=False)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: {what} file not found") from None
    except ValueError as exc:
        if "pickle" in str(exc):
            raise UnsafeFileError(
                f"{path}: {what} holds pickled objects; expected a plain numeric .npy (np.save of an array)"
            ) from None
        raise DataFormatError(f"{path}: not a readable .npy {what} ({exc})") from None
    except (OSError, EOFError) as exc:
        raise DataFormatError(f"{path}: not a readable .npy {what} ({exc})") from None


def open_h5(path: str | os.PathLike[str], mode: str = "r") -> Any:
    """The one guarded h5 open: missing, empty, truncated or non-HDF5 files are a :class:`DataFormatError`."""
    import h5py

    if mode == "r" and not Path(path).is_file():
        raise DataFormatError(f"{path}: h5 file not found")
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        msg = str(exc).split("\n")[0]
        raise DataFormatError(f"{path}: not a readable HDF5 file ({msg})") from None


def read_glove(path: str | os.PathLike[str], words: Sequence[str]) -> tuple[dict[str, np.ndarray], int]:
    """The vectors of ``words`` from a GloVe (``word v1 ... vD`` per line) or word2vec text file (its ``N D`` header
    line is skipped) -> ``({word: float64 vector}, D)``. Only the wanted lines are parsed (GloVe files are GBs); a
    word is matched exactly, else case-insensitively (cased files such as GloVe 840B); a word's first line counts.
    The one GloVe reader: ``unseen data make wordvectors`` and the czsl loader use it."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found (GloVe text file)")
    wanted = set(words)
    exact: dict[str, np.ndarray] = {}
    folded: dict[str, np.ndarray] = {}
    dim = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip()
            if not line:
                continue
            if dim == 0:
                parts = line.split()
                if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue  # word2vec text header "N D"
                dim = len(parts) - 1
                if dim < 1:
                    raise DataFormatError(
                        f"{path}: line {lineno}: expected 'word v1 ... vD', got {line[:60]!r}"
                    )
            head = line.split(b" ", 1)[0].decode("utf-8", errors="replace")
            if head not in wanted and head.lower() not in wanted:
                continue  # wanted words have no spaces: only their lines are parsed
            fields = line.rsplit(b" ", dim)  # from the right: some GloVe 840B words contain spaces
            word = fields[0].decode("utf-8", errors="replace")
            low = word.lower()
            if word in exact or (word not in wanted and (low not in wanted or low in exact or low in folded)):
                continue  # a word's first line counts
            where = f"{path}: line {lineno}: word '{word}'"
            if len(fields) - 1 != dim:
                raise DataFormatError(
                    f"{where}: expected {dim} numbers after the word, got {len(fields) - 1}"
                )
            try:
                vec = np.array([float(x) for x in fields[1:]], np.float64)
            except ValueError:
                raise DataFormatError(f"{where}: a value is not a number") from None
            if not np.all(np.isfinite(vec)):
                raise DataFormatError(f"{where}: a value is not finite")
            (exact if word in wanted else folded)[word if word in wanted else low] = vec
            if len(exact) == len(wanted):
                break
    if dim == 0:
        raise DataFormatError(f"{path}: no word vectors in the file")
    return {**folded, **exact}, dim


def short_hash(data: str | bytes, n: int = 10) -> str:
    """First ``n`` hex digits of the SHA-256 of ``data`` (text is UTF-8 encoded): names for caches and fingerprints."""
    import hashlib

    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:n]


def file_sha256(path: str | os.PathLike[str], limit: int | None = None) -> str:
    """Hex SHA-256 of a file (of its first ``limit`` bytes if given)."""
    import hashlib

    h = hashlib.sha256()
    remaining = limit
    with open(path, "rb") as f:
        while True:
            n = 1 << 20 if remaining is None else min(1 << 20, remaining)
            if n == 0:
                break
            chunk = f.read(n)
            if not chunk:
                break
            h.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- run environment
def cache_root() -> Path:
    """Where rendered worlds, pretrained CPU backbones and feature caches live: ``$UNSEEN_CACHE`` or
    ``~/.cache/unseen``."""
    return Path(os.environ.get("UNSEEN_CACHE", Path.home() / ".cache" / "unseen"))


def single_process_cache(path: Path, root: Path, what: str) -> None:
    """Under torchrun the ranks would race to build the same cache: ask for it to be built once first."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not Path(path).exists():
        raise FileNotFoundError(
            f"{path} is missing: under torchrun the ranks would {what} at the same time. Run the "
            f"command once without torchrun (or `unseen demo`) to build it; it is cached in {root}"
        )


#: Packages whose version can change a number (a metric or a rendered pixel): key -> (module, distribution).
_TRACKED_PACKAGES: dict[str, tuple[str, str]] = {
    "torch": ("torch", "torch"),
    "torchvision": ("torchvision", "torchvision"),
    "numpy": ("numpy", "numpy"),
    "Pillow": ("PIL", "pillow"),
    "open_clip": ("open_clip", "open_clip_torch"),
    "timm": ("timm", "timm"),
    "scipy": ("scipy", "scipy"),
    "h5py": ("h5py", "h5py"),
}


def versions() -> dict[str, str]:
    """What a number depends on, recorded in every results.json and world.json: the versions of ``unseen``, Python
    and the packages of :data:`_TRACKED_PACKAGES` (``"not installed"`` when missing), torch's CUDA and cuDNN
    versions (``"none"`` on a CPU build), its CPU kernel level and thread count, the ``device`` (GPU name when CUDA
    is available, else the CPU model), the ``cpu`` model, and ``git_commit`` (``-dirty`` with uncommitted changes)
    when ``unseen`` runs from a git checkout, and ``world_size`` (torchrun's process count: each process trains on its
    share of every batch). Computed once per process (the thread count and process count on every call)."""
    out = dict(_static_versions())
    out["world_size"] = os.environ.get("WORLD_SIZE", "1")
    torch = sys.modules.get("torch")
    if torch is not None:  # runtime state: a run may have changed it after the first call
        out["torch_threads"] = str(torch.get_num_threads())
    return out


@functools.lru_cache(maxsize=1)
def _static_versions() -> dict[str, str]:
    import platform

    import PIL  # noqa: F401  (cheap; _package_version then reads the version of the Pillow that draws)

    import unseen

    torch = _import_torch()
    out = {"unseen": unseen.__version__, "python": platform.python_version()}
    for key, (module, dist) in _TRACKED_PACKAGES.items():
        out[key] = _package_version(module, dist)
    out["cpu"] = _cpu_name()
    out["device"] = out["cpu"]
    if torch is not None:
        out["cuda"] = str(torch.version.cuda or "none")
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        out["cudnn"] = str(cudnn) if cudnn else "none"
        get_capability = getattr(torch.backends.cpu, "get_cpu_capability", None)
        if get_capability is not None:  # AVX2 vs AVX512 kernels can change CPU results between machines
            out["torch_cpu_capability"] = str(get_capability())
        if torch.cuda.is_available():
            out["device"] = torch.cuda.get_device_name(torch.cuda.current_device())
    commit = git_commit(Path(__file__).resolve().parent)
    if commit:
        out["git_commit"] = commit
    return out


def _import_torch() -> Any:
    """torch, or None where it is not installed (the worlds render without it)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _package_version(module: str, dist: str) -> str:
    """The imported module's version if it is loaded, else the installed distribution's (without importing it:
    open_clip or h5py take seconds to import)."""
    import importlib.metadata

    mod = sys.modules.get(module)
    version = getattr(mod, "__version__", None) if mod is not None else None
    if version:
        return str(version)
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def git_commit(path: str | os.PathLike[str], timeout: float = 5.0) -> str | None:
    """The commit of the git checkout that holds ``path`` (a folder of tracked files), with ``-dirty`` when tracked
    files have uncommitted changes; None without git, outside a checkout, or for an installed copy that merely lies
    inside some repository (its files are not tracked there)."""
    import subprocess

    # no GIT_DIR & co. from a calling hook; no index lock: concurrent git commands in the checkout must not fail
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_OPTIONAL_LOCKS"] = "0"
    folder = Path(path)

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=True,
            stdin=subprocess.DEVNULL,
        )
        return done.stdout.strip()

    try:
        tracked = git("ls-files")
        if not tracked:
            return None
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        return None
    return commit + ("-dirty" if dirty else "") if commit else None
