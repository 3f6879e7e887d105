"""Teacher-output caching: run a frozen teacher over the training split once, then gather.

A teacher is frozen (eval mode, no gradients) while it teaches, so when its input is the same every
epoch (no random augmentation) its outputs are a function of the sample index. The trainer then
computes, once per stage, the teacher's logits and the tapped layers the stage's loss terms need, over
the training split in sample-index order, and answers every batch by gathering the rows of the
batch's ``indices``: the teacher's forward pass disappears from the training loop.

``training.teacher_cache`` chooses (per stage, like every training setting):

* ``"auto"`` (default): cache where valid, in memory up to :data:`AUTO_MEMORY_LIMIT` bytes and on
  disk above; where invalid, run the teachers every batch and say why once.
* ``"memory"`` / ``"disk"``: cache there; where caching is invalid that is an error (a
  :class:`~kdframe.errors.ScheduleError` before training for augmentation, a
  :class:`~kdframe.errors.TrainingError` for a teacher whose outputs are random).
* ``"off"``: run the teachers every batch.

Caching is invalid when the dataset augments training batches (the teacher would see a different
image every epoch), when it is a :class:`~kdframe.data.StreamingDataset` (not cached: its images are
not one tensor to key the cache by), or when the teacher's output is random in eval mode (checked by
running one chunk twice). Teacher dropout stays valid: it only picks which teachers teach a batch.

Entries are keyed by the SHA-256 of the teacher's class and state dict, the training images, the
tapped layer paths and the precision. An in-process store (:func:`default_store`) keeps them, so a
later stage or a sweep's later run that learns from the same teacher on the same data reuses them;
disk entries live under ``$KDFRAME_CACHE_DIR`` (default ``~/.cache/kdframe``)``/teacher-outputs/<key>``
as ``.npy`` files that are memory-mapped, so they also outlive the process.

Cached outputs are float32 and come from batches of ``data.eval_batch_size`` samples instead of the
training batches, so they equal the uncached run's up to floating-point rounding.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from kdframe import distributed, precision
from kdframe.data import AnyDataset, StreamingDataset
from kdframe.errors import ScheduleError, StorageError, TrainingError
from kdframe.features import FeatureTap
from kdframe.losses import ModelOutputs
from kdframe.stage_kinds import trains

CacheMode = Literal["auto", "memory", "disk", "off"]

CACHE_DIR_ENV = "KDFRAME_CACHE_DIR"
#: ``"auto"`` keeps a teacher's outputs in memory up to this many bytes, on disk above.
AUTO_MEMORY_LIMIT = 2 * 1024**3
#: The in-process store drops its least recently used memory entries beyond this many bytes.
STORE_MEMORY_LIMIT = 4 * 1024**3
FORMAT_VERSION = 1


class TeacherCacheWarning(UserWarning):
    """``training.teacher_cache`` is ``"auto"`` and caching is not valid: the teachers run every batch."""


def cache_root() -> Path:
    """Where disk entries go: ``$KDFRAME_CACHE_DIR`` or ``~/.cache/kdframe``, then ``teacher-outputs``."""
    base = os.environ.get(CACHE_DIR_ENV, "").strip()
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "kdframe") / "teacher-outputs"


def tensor_digest(tensor: Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    digest = hashlib.sha256(f"{tensor.dtype}:{tuple(tensor.shape)}".encode())
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


def state_digest(model: nn.Module) -> str:
    """SHA-256 of a model's class and state dict (names, dtypes, shapes and values)."""
    digest = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor_digest(value).encode())
    return digest.hexdigest()


def invalid_reason(data: AnyDataset) -> str | None:
    """Why the data makes teacher caching invalid (random augmentation, or a streaming dataset,
    whose images are not held as one tensor to key and run the cache on), or ``None``."""
    if isinstance(data, StreamingDataset):
        return f"dataset '{data.name}' is a streaming (DataLoader) dataset"
    if data.augment is not None:
        return (
            f"dataset '{data.name}' augments its training batches at random, so a teacher sees a "
            "different input every epoch"
        )
    return None


def check_settings(schedule: Any, setups: list[Any], data: AnyDataset) -> None:
    """Before training: an explicit ``"memory"``/``"disk"`` cache for a stage whose data is augmented
    (or streamed) is a :class:`ScheduleError` naming the key and the fix."""
    reason = invalid_reason(data)
    if reason is None:
        return
    streaming = isinstance(data, StreamingDataset)
    for setup in setups:
        mode = setup.training.teacher_cache
        if mode not in ("memory", "disk") or not setup.teachers or not trains(setup.kind):
            continue
        override = schedule.training.stages.get(setup.info.name, {})
        key = f"training.stages.{setup.info.name}.teacher_cache" if "teacher_cache" in override else "training.teacher_cache"
        raise ScheduleError(
            f"{key} is '{mode}', but {reason} (stage '{setup.info.name}'), so its outputs cannot be "
            f"cached. Set {key} to \"auto\" (the teachers then run every batch) or \"off\""
            + ("." if streaming else ", or turn the augmentation off (e.g. data.params.augment=false).")
        )


@dataclass
class CachedOutputs:
    """One teacher's float32 outputs over the training split, row ``i`` for sample ``i``.

    Attributes:
        key: The cache key.
        logits: ``(N, classes)``: a tensor (memory) or a memory-mapped array (disk).
        features: Tapped layer outputs by path, ``(N, ...)`` each, stored like ``logits``.
    """

    key: str
    logits: Tensor | np.ndarray
    features: dict[str, Tensor | np.ndarray] = field(default_factory=dict)

    @property
    def on_disk(self) -> bool:
        """Whether the outputs are memory-mapped files."""
        return isinstance(self.logits, np.ndarray)

    @property
    def nbytes(self) -> int:
        """Bytes held in memory (0 for memory-mapped entries)."""
        if self.on_disk:
            return 0
        return sum(int(t.numel() * t.element_size()) for t in (self.logits, *self.features.values()))  # type: ignore[union-attr]

    @property
    def file_bytes(self) -> int:
        """Bytes of all outputs, wherever they are."""
        return sum(int(np.prod(t.shape)) * 4 for t in (self.logits, *self.features.values()))

    def in_memory(self, device: torch.device) -> CachedOutputs:
        """This entry as tensors on ``device`` (a copy of a memory-mapped one; itself otherwise)."""
        if not self.on_disk:
            return self

        def load(array: Any) -> Tensor:
            return torch.from_numpy(np.array(array)).to(device)

        return CachedOutputs(self.key, load(self.logits), {path: load(value) for path, value in self.features.items()})

    def gather(self, indices: Tensor, device: torch.device) -> ModelOutputs:
        """The outputs of the samples at ``indices`` (positions in the training split), on ``device``."""
        if self.on_disk:
            rows = indices.to("cpu").numpy()

            def take(array: Any) -> Tensor:
                return torch.from_numpy(np.ascontiguousarray(array[rows])).to(device)

        else:

            def take(array: Any) -> Tensor:
                return array.index_select(0, indices.to(array.device)).to(device)

        return ModelOutputs(take(self.logits), {path: take(value) for path, value in self.features.items()})


class TeacherCache:
    """A store of :class:`CachedOutputs` by key: in memory (least recently used dropped beyond
    ``max_memory_bytes``) and, for disk entries, in ``directory``.

    Attributes:
        computed: Number of entries computed by running a teacher (for tests and reports).
    """

    def __init__(self, directory: Path | None = None, max_memory_bytes: int = STORE_MEMORY_LIMIT) -> None:
        self.directory = directory
        self.max_memory_bytes = max_memory_bytes
        self.entries: OrderedDict[str, CachedOutputs] = OrderedDict()
        self.computed = 0
        self._said: set[str] = set()
        self._digests: dict[int, tuple[weakref.ReferenceType[Tensor], int, str]] = {}

    # -- keys -----------------------------------------------------------------------------------

    def images_digest(self, images: Tensor) -> str:
        """:func:`tensor_digest` of the training images, remembered while the tensor is unchanged."""
        known = self._digests.get(id(images))
        if known is not None and known[0]() is images and known[1] == images._version:
            return known[2]
        digest = tensor_digest(images)
        self._digests = {key: value for key, value in self._digests.items() if value[0]() is not None}
        self._digests[id(images)] = (weakref.ref(images), images._version, digest)
        return digest

    def key(self, teacher: nn.Module, images: Tensor, paths: list[str], precision_name: str) -> str:
        """The cache key of ``teacher``'s outputs (and ``paths``' features) on ``images``."""
        payload = {
            "version": FORMAT_VERSION,
            "teacher": state_digest(teacher),
            "images": self.images_digest(images),
            "paths": sorted(paths),
            "precision": precision_name,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def say_once(self, message: str) -> None:
        """Warn with :class:`TeacherCacheWarning`, once per message and store."""
        if message not in self._said:
            self._said.add(message)
            warnings.warn(message, TeacherCacheWarning, stacklevel=3)

    # -- entries --------------------------------------------------------------------------------

    def _remember(self, entry: CachedOutputs) -> CachedOutputs:
        self.entries[entry.key] = entry
        self.entries.move_to_end(entry.key)
        while sum(e.nbytes for e in self.entries.values()) > self.max_memory_bytes and len(self.entries) > 1:
            oldest = next(iter(self.entries))
            if oldest == entry.key:
                break
            del self.entries[oldest]
        return entry

    def outputs(
        self,
        teacher: nn.Module,
        tap: FeatureTap | None,
        images: Tensor,
        *,
        mode: CacheMode,
        batch_size: int,
        channels_last: bool,
        precision_name: precision.Precision,
        device: torch.device,
        label: str,
        progress: Callable[[int], None] | None = None,
    ) -> CachedOutputs | None:
        """``teacher``'s outputs on ``images`` from the store, the disk, or computed now.

        Returns ``None`` when the teacher's outputs turn out to be random (``"auto"``; an explicit
        mode raises :class:`TrainingError`). ``label`` names the teacher in messages. ``progress``
        hears the number of images computed so far (0 first) when the outputs are computed.
        """
        paths = list(tap.paths) if tap else []
        key = self.key(teacher, images, paths, precision_name)
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        env = distributed.current()
        folder = (self.directory or cache_root()) / key
        count = int(images.shape[0])
        runs = _Runner(key, teacher, tap, images, batch_size, channels_last, precision_name, device, progress)
        entry = self._load_or_discard(folder, key, count, paths, label, discard=env.is_main)
        if env.active and distributed.broadcast_object(entry is not None) != (entry is not None):
            # Rank 0 decides whether the disk entry exists (it may be writing it right now).
            entry = self._load_or_discard(folder, key, count, paths, label, discard=False) if entry is None else None
        if entry is None:
            # Every rank runs the first chunk (the randomness check and the size); rank 0 alone
            # writes a disk entry, which the others then map.
            if progress is not None:
                progress(0)
            first = runs.run(0)
            if not runs.deterministic(first):
                message = (
                    f"{label} gives different outputs for the same input in eval mode (random layers), "
                    "so its outputs cannot be cached"
                )
                if mode != "auto":
                    raise TrainingError(f"training.teacher_cache is '{mode}', but {message}. Set it to \"auto\" or \"off\".")
                self.say_once(f"training.teacher_cache: {message}; it runs every batch.")
                return None
            size = runs.total_bytes(first)
            if mode == "memory" or (mode == "auto" and size <= AUTO_MEMORY_LIMIT):
                entry = runs.fill_memory(first)
                self.computed += 1
            else:
                failure = None
                if env.is_main:
                    try:
                        entry = _write(runs, first, key, folder)
                        self.computed += 1
                    except OSError as error:
                        failure = f"the teacher-output cache cannot be written to '{folder}': {error.strerror or error}"
                failure = distributed.broadcast_object(failure)
                distributed.barrier()
                if failure is not None:
                    if mode != "auto":
                        raise StorageError(f"{failure}. Set {CACHE_DIR_ENV} to a writable folder with room for {size / 2**30:.1f} GiB.")
                    self.say_once(f"training.teacher_cache: {failure}; the teachers run every batch.")
                    return None
                entry = entry or self._load_or_discard(folder, key, count, paths, label, discard=False)
                if entry is None:
                    raise TrainingError(f"The teacher-output cache of {label} that rank 0 wrote is missing at '{folder}'.")
        elif mode == "memory" or (mode == "auto" and entry.file_bytes <= AUTO_MEMORY_LIMIT):
            entry = entry.in_memory(device)
        return self._remember(entry)


    def _load_or_discard(
        self, folder: Path, key: str, count: int, paths: list[str], label: str, *, discard: bool
    ) -> CachedOutputs | None:
        """The disk entry in ``folder``, or ``None``. A damaged entry is treated as missing: with
        ``discard`` (the process that writes entries) it is removed, with a warning, so that it is
        computed again; otherwise it is an error naming the folder."""
        try:
            return _load(folder, key, count, paths)
        except DamagedEntry as damage:
            if not discard:
                raise TrainingError(
                    f"The teacher-output cache entry of {label} in '{folder}' is damaged: {damage}. Delete "
                    f"that folder (it is recomputed), or set training.teacher_cache to \"off\"."
                ) from None
            warnings.warn(
                f"The teacher-output cache entry of {label} in '{folder}' is damaged ({damage}); it is "
                "removed and computed again.",
                RuntimeWarning,
                stacklevel=2,
            )
            shutil.rmtree(folder, ignore_errors=True)
            if folder.exists():
                raise TrainingError(
                    f"The teacher-output cache entry of {label} in '{folder}' is damaged ({damage}) and "
                    "cannot be removed. Delete that folder by hand, or set training.teacher_cache to \"off\"."
                ) from None
            return None


class _Runner:
    """Runs one teacher over the training images in index order, ``batch_size`` samples at a time."""

    def __init__(
        self,
        key: str,
        teacher: nn.Module,
        tap: FeatureTap | None,
        images: Tensor,
        batch_size: int,
        channels_last: bool,
        precision_name: precision.Precision,
        device: torch.device,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.key, self.teacher, self.tap, self.images = key, teacher, tap, images
        self.batch_size, self.channels_last = batch_size, channels_last
        self.precision_name, self.device = precision_name, device
        self.progress = progress
        self.count = int(images.shape[0])

    @torch.no_grad()
    def run(self, start: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Outputs (float32, detached) for samples ``start`` to ``start + batch_size``."""
        chunk = self.images[start : start + self.batch_size]
        if self.channels_last and chunk.dim() == 4:
            chunk = chunk.contiguous(memory_format=torch.channels_last)
        if self.tap:
            self.tap.take()
        with precision.autocast(self.precision_name, self.device):
            logits = self.teacher(chunk)
        features = self.tap.take() if self.tap else {}
        as_rows = {path: precision.to_float32(value).contiguous() for path, value in features.items()}
        return precision.to_float32(logits).contiguous(), as_rows

    def deterministic(self, first: tuple[Tensor, dict[str, Tensor]]) -> bool:
        """Whether running the first chunk again gives the same outputs."""
        again = self.run(0)
        pairs = [(first[0], again[0])] + [(first[1][path], again[1][path]) for path in first[1]]
        return all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in pairs)

    def total_bytes(self, first: tuple[Tensor, dict[str, Tensor]]) -> int:
        per_sample = sum(t[0].numel() * 4 for t in (first[0], *first[1].values()))
        return per_sample * self.count

    def chunks(self, first: tuple[Tensor, dict[str, Tensor]]) -> Iterator[tuple[int, Tensor, dict[str, Tensor]]]:
        """``(start, logits, features)`` of every chunk, the first one given; each chunk counted to
        ``progress`` once it is used."""
        yield 0, first[0], first[1]
        self._report(first[0].shape[0])
        for start in range(self.batch_size, self.count, self.batch_size):
            logits, features = self.run(start)
            yield start, logits, features
            self._report(start + logits.shape[0])

    def _report(self, done: int) -> None:
        if self.progress is not None:
            self.progress(int(done))

    def fill_memory(self, first: tuple[Tensor, dict[str, Tensor]]) -> CachedOutputs:
        """All outputs as tensors on the images' device."""
        logits = first[0].new_empty((self.count, *first[0].shape[1:]))
        features = {path: value.new_empty((self.count, *value.shape[1:])) for path, value in first[1].items()}
        for start, chunk_logits, chunk_features in self.chunks(first):
            stop = start + chunk_logits.shape[0]
            logits[start:stop] = chunk_logits
            for path, value in chunk_features.items():
                features[path][start:stop] = value
        return CachedOutputs(self.key, logits, features)


def _file_names(paths: list[str]) -> dict[str, str]:
    return {path: f"feature-{index}.npy" for index, path in enumerate(sorted(paths))}


def _write(runs: _Runner, first: tuple[Tensor, dict[str, Tensor]], key: str, folder: Path) -> CachedOutputs:
    """Write the outputs chunk by chunk into memory-mapped ``.npy`` files, then map them read-only."""
    temporary = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        _write_files(runs, first, key, temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    try:
        os.replace(temporary, folder)
    except OSError:  # another process wrote the same entry first: use theirs
        shutil.rmtree(temporary, ignore_errors=True)
    try:
        entry = _load(folder, key, runs.count, list(first[1]))
    except DamagedEntry as damage:
        raise TrainingError(f"The teacher-output cache written to '{folder}' cannot be read back: {damage}.") from None
    if entry is None:
        raise TrainingError(f"The teacher-output cache could not be written to '{folder}'.")
    return entry


def _write_files(runs: _Runner, first: tuple[Tensor, dict[str, Tensor]], key: str, temporary: Path) -> None:
    """Fill ``temporary`` with the ``.npy`` files and ``meta.json`` of an entry."""
    names = _file_names(list(first[1]))
    temporary.mkdir(parents=True)
    arrays = {
        "logits.npy": np.lib.format.open_memmap(temporary / "logits.npy", mode="w+", dtype=np.float32, shape=(runs.count, *first[0].shape[1:]))
    }
    for path, value in first[1].items():
        arrays[names[path]] = np.lib.format.open_memmap(
            temporary / names[path], mode="w+", dtype=np.float32, shape=(runs.count, *value.shape[1:])
        )
    for start, logits, features in runs.chunks(first):
        stop = start + logits.shape[0]
        arrays["logits.npy"][start:stop] = logits.cpu().numpy()
        for path, value in features.items():
            arrays[names[path]][start:stop] = value.cpu().numpy()
    for array in arrays.values():
        array.flush()
    del arrays
    meta = {"version": FORMAT_VERSION, "key": key, "count": runs.count, "features": names}
    (temporary / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


class DamagedEntry(Exception):
    """A disk entry exists but cannot be used (a file is missing, truncated, of the wrong dtype or
    shape, or its meta.json does not match its key); the message says what."""


def _load(folder: Path, key: str, count: int, paths: list[str]) -> CachedOutputs | None:
    """A disk entry, memory-mapped, or ``None`` when there is none; :class:`DamagedEntry` when the
    folder exists but does not hold a complete, matching entry. Files are read with
    ``numpy.load(mmap_mode="r")``, never unpickled (``allow_pickle`` stays off)."""
    if not folder.exists():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as error:
        raise DamagedEntry(f"its meta.json cannot be read ({error})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("features"), dict):
        raise DamagedEntry("its meta.json is not a cache entry's")
    if meta.get("version") != FORMAT_VERSION or meta.get("key") != key or meta.get("count") != count:
        raise DamagedEntry("its meta.json names another version, key or sample count")
    if sorted(meta["features"]) != sorted(paths):
        raise DamagedEntry("it holds other layers than the ones asked for")
    names = {"logits": "logits.npy", **meta["features"]}
    arrays = {}
    for what, name in names.items():
        if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+\.npy", name):
            raise DamagedEntry(f"its meta.json names an unexpected file {name!r}")
        try:
            array = np.load(folder / name, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise DamagedEntry(f"{name} cannot be read as a float32 array ({error})") from None
        if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.ndim < 2 or array.shape[0] != count:
            shape = getattr(array, "shape", None)
            raise DamagedEntry(f"{name} is not a float32 array of {count} rows (it is {getattr(array, 'dtype', '?')} {shape})")
        arrays[what] = array
    logits = arrays.pop("logits")
    return CachedOutputs(key, logits, arrays)


_DEFAULT_STORE: TeacherCache | None = None


def default_store() -> TeacherCache:
    """The process's store, shared by every stage and run (so chains and sweeps reuse entries)."""
    global _DEFAULT_STORE
    if _DEFAULT_STORE is None:
        _DEFAULT_STORE = TeacherCache()
    return _DEFAULT_STORE


def clear_default_store() -> None:
    """Forget every in-memory entry of the process's store (disk entries stay)."""
    global _DEFAULT_STORE
    _DEFAULT_STORE = None
