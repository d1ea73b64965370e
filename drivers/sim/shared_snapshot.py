"""The physics state the cameras need, shared with the render process through a seqlock in shared memory.

The physics process writes a snapshot after every step (about 5 µs); the render process copies it out
whenever a camera is due. Neither side ever waits on a lock the other holds:

- seqlock: the writer makes ``seq`` odd, copies, makes it even. The reader copies between two reads of
  ``seq`` and keeps the copy only if both reads are equal and even; otherwise it tries again.
  (Stores and loads keep their order on x86. On weakly ordered CPUs a torn copy is possible in
  principle; it would show as one odd frame, never reach the physics.)
- control words beside the snapshot, each with one writer: per-camera injected latency (the control
  socket writes it), per-camera published frame counts (the render process writes them), a stop flag.

The snapshot is what rendering depends on and the physics process can change: ``qpos`` (robot and
free objects), ``mocap_pos/quat`` (target, calibration board) and every body's ``body_pos/body_quat``
(``tasks.reset`` moves static bodies in the model itself), plus the sim clock for frame stamps.
"""

from __future__ import annotations

from multiprocessing import shared_memory
from typing import Any

import mmap
import os

import numpy as np

# Header words (8 bytes each): seq, stop, nq, nmocap, nbody, ncam, sim_clock; then latency[ncam],
# frames[ncam]; then the snapshot payload.
_SEQ, _STOP, _NQ, _NMOCAP, _NBODY, _NCAM, _CLOCK = range(7)
_HEADER = 7


def _payload_size(model: Any) -> int:
    return model.nq + 7 * model.nmocap + 7 * model.nbody


class _Attached:
    """A block another process created, mapped without registering it with this process's resource tracker
    (before Python 3.13 ``SharedMemory(name)`` registers it, and the tracker then removes the creator's block
    when this process exits, or complains when the creator removes it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        fd = os.open(os.path.join("/dev/shm", name.lstrip("/")), os.O_RDWR)  # where POSIX shm lives on Linux
        try:
            self._mmap = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        self.buf = memoryview(self._mmap)

    def close(self) -> None:
        self.buf.release()
        self._mmap.close()


def _attach(name: str) -> Any:
    try:
        return shared_memory.SharedMemory(name=name, track=False)  # Python >= 3.13
    except TypeError:
        return _Attached(name)


class SharedSnapshot:
    """One shared-memory block: :meth:`create` in the physics process, :meth:`attach` in the renderer."""

    def __init__(self, shm: Any, model: Any, data: Any, n_cameras: int, owner: bool, maps: bool = True) -> None:
        self._shm = shm  # a SharedMemory, or an _Attached mapping (name, buf, close)
        self._owner = owner  # created it: sets the dimensions, unlinks it at close
        self._maps = maps  # False for a view: the block is unmapped by the object it came from
        words = np.ndarray((len(shm.buf) // 8,), dtype=np.float64, buffer=shm.buf)
        self._u64 = words.view(np.uint64)
        self._words = words
        self.latency = words[_HEADER:_HEADER + n_cameras]  # seconds, per camera
        self.frames = self._u64[_HEADER + n_cameras:_HEADER + 2 * n_cameras]  # frames published, per camera
        start = _HEADER + 2 * n_cameras
        self._payload = words[start:start + _payload_size(model)]
        self._copy = np.empty_like(self._payload)
        # Views of the arrays the snapshot holds (MuJoCo never moves these buffers).
        self._fields = (data.qpos, data.mocap_pos.reshape(-1), data.mocap_quat.reshape(-1),
                        model.body_pos.reshape(-1), model.body_quat.reshape(-1))
        self._splits = np.cumsum([f.size for f in self._fields])[:-1]
        dims = (model.nq, model.nmocap, model.nbody, n_cameras)
        if owner:
            self._u64[[_NQ, _NMOCAP, _NBODY, _NCAM]] = dims
        elif tuple(int(x) for x in self._u64[[_NQ, _NMOCAP, _NBODY, _NCAM]]) != dims:
            raise ValueError(f"shared snapshot {shm.name} is for another model or camera count "
                             f"(nq, nmocap, nbody, ncam = {self._u64[[_NQ, _NMOCAP, _NBODY, _NCAM]].tolist()}, "
                             f"this model {list(dims)})")

    @classmethod
    def create(cls, model: Any, data: Any, n_cameras: int) -> SharedSnapshot:
        """A new block for ``model`` (the physics process's); readers see nothing until the first ``write``."""
        size = 8 * (_HEADER + 2 * n_cameras + _payload_size(model))
        # Registered with this process's resource tracker, which removes it should this process be killed.
        return cls(shared_memory.SharedMemory(create=True, size=size), model, data, n_cameras, owner=True)

    @classmethod
    def attach(cls, name: str, model: Any, data: Any, n_cameras: int) -> SharedSnapshot:
        """The block another process created; ``read`` copies it into ``model``/``data`` (the renderer's own)."""
        return cls(_attach(name), model, data, n_cameras, owner=False)

    def view(self, model: Any, data: Any) -> SharedSnapshot:
        """A reader over this same block in this process (rendering in a thread: --render-in-process)."""
        return SharedSnapshot(self._shm, model, data, len(self.latency), owner=False, maps=False)

    @property
    def name(self) -> str:
        return self._shm.name

    # -- physics side
    def write(self, sim_clock: float) -> None:
        """Publish the bound model/data state (call where nothing else modifies them: under sim.lock)."""
        u = self._u64
        u[_SEQ] += 1  # odd: writing
        self._words[_CLOCK] = sim_clock
        np.concatenate(self._fields, out=self._payload)
        u[_SEQ] += 1  # even: consistent

    # -- render side
    def read(self, retries: int = 1000) -> float | None:
        """Copy a consistent snapshot into the bound model/data; its sim clock, or None if none came.

        Returns None before the first write, and when the writer stopped halfway (it died).
        """
        u = self._u64
        for _ in range(retries):
            before = int(u[_SEQ])
            if before == 0:
                return None
            if before & 1:
                continue
            np.copyto(self._copy, self._payload)
            clock = float(self._words[_CLOCK])
            if int(u[_SEQ]) == before:
                for dst, src in zip(self._fields, np.split(self._copy, self._splits), strict=True):
                    dst[:] = src
                return clock
        return None

    @property
    def stop(self) -> bool:
        return bool(self._u64[_STOP])

    @stop.setter
    def stop(self, value: bool) -> None:
        self._u64[_STOP] = int(bool(value))

    def close(self) -> None:
        """Unmap (and, in the creating process, remove) the block; views taken from it must be dropped first."""
        self.latency = self.frames = self._payload = self._copy = None  # type: ignore[assignment]
        self._words = self._u64 = None  # type: ignore[assignment]
        if not self._maps:
            return
        try:
            self._shm.close()
        except BufferError:  # a view (a --render-in-process reader) still holds it; unmapped with the process
            pass
        if self._owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
