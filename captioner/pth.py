"""Read legacy (pre-1.6, non-zip) PyTorch state-dict files into numpy arrays without torch or unpickling.

The file is five pickles (magic number, protocol, sys info, the state dict, the storage keys) followed by
each storage's raw bytes.  Instead of unpickling, the opcode streams are interpreted by a tiny stack machine
that knows only the opcodes and globals a plain state dict needs; anything else is refused.
"""

from __future__ import annotations

import io
import pickletools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner.errors import BackboneError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# The only globals a legacy state dict refers to; each maps to a marker the stack machine understands.
_ORDERED_DICT = "collections OrderedDict"
_REBUILD_TENSOR = "torch._utils _rebuild_tensor_v2"
_STORAGE_DTYPES = {"torch FloatStorage": np.dtype("<f4"), "torch LongStorage": np.dtype("<i8")}
ALLOWED_GLOBALS = (_ORDERED_DICT, _REBUILD_TENSOR, *_STORAGE_DTYPES)


@dataclass(frozen=True)
class _Global:
    name: str


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


class _Mark:
    """Marker pushed by the MARK opcode."""


_MARK = _Mark()


def _fail(path: Path | str, what: str) -> BackboneError:
    return BackboneError(
        f"Expected a plain PyTorch state-dict file (legacy format) at {path}; {what}. "
        "The file is corrupt or not a state dict; reinstall the package that provides it."
    )


def _pop_mark(stack: list, path: Path | str) -> list:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            items = stack[i + 1 :]
            del stack[i:]
            return items
    raise _fail(path, "received a pickle opcode that needs a MARK but none is on the stack")


def _reduce(func: object, args: object, path: Path | str) -> object:
    """Apply one of the allowed callables; never calls anything from the stream."""
    if func == _Global(_ORDERED_DICT):
        if args != ():
            raise _fail(path, f"received OrderedDict called with arguments {args!r}")
        return {}
    if func == _Global(_REBUILD_TENSOR):
        if not isinstance(args, tuple) or len(args) < 4:
            raise _fail(path, f"received _rebuild_tensor_v2 with arguments {args!r}")
        storage, offset, shape, strides = args[:4]
        ok = (
            isinstance(storage, _Storage)
            and isinstance(offset, int)
            and isinstance(shape, tuple)
            and isinstance(strides, tuple)
            and len(shape) == len(strides)
            and all(isinstance(v, int) and v >= 0 for v in (offset, *shape, *strides))
        )
        if not ok:
            raise _fail(path, f"received malformed tensor arguments {args[:4]!r}")
        # Refuse views that would reach outside their storage (as_strided does no bounds checking).
        if all(shape):
            last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
            if last >= storage.numel:
                raise _fail(path, f"received a tensor view {shape} / {strides} past its storage")
        return _Tensor(storage, offset, shape, strides)
    raise _fail(path, f"received a call to {func!r}, which is not allowed")


def _persistent_load(pid: object, path: Path | str) -> _Storage:
    ok = (
        isinstance(pid, tuple)
        and len(pid) >= 5
        and pid[0] == "storage"
        and isinstance(pid[1], _Global)
        and pid[1].name in _STORAGE_DTYPES
        and isinstance(pid[2], str)
        and isinstance(pid[4], int)
        and pid[4] >= 0
    )
    if not ok:
        raise _fail(path, f"received an unexpected persistent id {pid!r}")
    return _Storage(key=pid[2], dtype=_STORAGE_DTYPES[pid[1].name], numel=pid[4])


def _run_pickle(stream: io.BufferedIOBase, path: Path | str) -> object:
    """Interpret one pickle from `stream` and return its value, allowing only state-dict constructs."""
    stack: list = []
    memo: dict[int, object] = {}
    for op, arg, _pos in pickletools.genops(stream):
        name = op.name
        if name == "PROTO":
            if arg > 2:
                raise _fail(path, f"received pickle protocol {arg} (expected <= 2)")
        elif name == "STOP":
            if len(stack) != 1:
                raise _fail(path, "received a pickle that does not end with exactly one value")
            return stack.pop()
        elif name == "MARK":
            stack.append(_MARK)
        elif name == "GLOBAL":
            if arg not in ALLOWED_GLOBALS:
                raise BackboneError(
                    f"Refusing to read {path}: it refers to the global {arg!r}, but a plain state dict may "
                    f"only use {', '.join(ALLOWED_GLOBALS)}. The file may be malicious; do not load it."
                )
            stack.append(_Global(arg))
        elif name in ("BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise _fail(path, f"received a reference to memo slot {arg}, which is empty")
            stack.append(memo[arg])
        elif name in ("BININT", "BININT1", "BININT2", "LONG1", "BINUNICODE"):
            stack.append(arg)
        elif name == "NONE":
            stack.append(None)
        elif name == "NEWTRUE":
            stack.append(True)
        elif name == "NEWFALSE":
            stack.append(False)
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE1", "TUPLE2"):
            n = 1 if name == "TUPLE1" else 2
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "TUPLE":
            stack.append(tuple(_pop_mark(stack, path)))
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            _set_items(stack[-1], [key, value], path)
        elif name == "SETITEMS":
            items = _pop_mark(stack, path)
            _set_items(stack[-1], items, path)
        elif name == "APPENDS":
            items = _pop_mark(stack, path)
            if not isinstance(stack[-1], list):
                raise _fail(path, "received APPENDS on something that is not a list")
            stack[-1].extend(items)
        elif name == "BINPERSID":
            stack.append(_persistent_load(stack.pop(), path))
        elif name == "REDUCE":
            args = stack.pop()
            stack[-1] = _reduce(stack[-1], args, path)
        elif name == "BUILD":
            # OrderedDict's state is its __dict__ (torch puts `_metadata` there): not needed, dropped.
            state = stack.pop()
            if not isinstance(stack[-1], dict) or not isinstance(state, dict):
                raise _fail(path, "received a BUILD on something other than a dict")
        else:
            raise _fail(path, f"received the pickle opcode {name}, which a plain state dict does not use")
    raise _fail(path, "the file ended inside a pickle")


def _set_items(target: object, items: list, path: Path | str) -> None:
    if not isinstance(target, dict) or len(items) % 2:
        raise _fail(path, "received SETITEM(S) on something that is not a dict")
    for key, value in zip(items[::2], items[1::2], strict=True):
        if not isinstance(key, str | int):
            raise _fail(path, f"received a dict key of type {type(key).__name__}")
        target[key] = value


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a legacy PyTorch state-dict file into {name: array} in file order, without torch or pickle."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BackboneError(f"Expected a readable PyTorch state-dict file at {path}; received {e}.") from e
    stream = io.BytesIO(data)
    try:
        magic = _run_pickle(stream, path)
        if magic != MAGIC_NUMBER:
            raise _fail(
                path,
                f"received magic number {magic!r} (expected {MAGIC_NUMBER:#x}; zip-format "
                "files from torch >= 1.6 are not supported)",
            )
        protocol = _run_pickle(stream, path)
        if protocol != PROTOCOL_VERSION:
            raise _fail(path, f"received protocol version {protocol!r} (expected {PROTOCOL_VERSION})")
        sys_info = _run_pickle(stream, path)
        if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
            raise _fail(path, f"received sys info {sys_info!r} (expected a little-endian file)")
        state = _run_pickle(stream, path)
        keys = _run_pickle(stream, path)
    except (ValueError, IndexError) as e:  # truncated/garbled opcode streams, stack underflow
        raise _fail(path, f"its pickle stream is damaged ({e})") from e
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise _fail(path, "its main object is not a dict of named tensors")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _fail(path, "its storage-key list is malformed")

    needed = {t.storage.key: t.storage for t in state.values() if isinstance(t, _Tensor)}
    buffers: dict[str, np.ndarray] = {}
    pos = stream.tell()
    for key in keys:
        if pos + 8 > len(data):
            raise _fail(path, f"it ends before the data of storage {key}")
        count = int(np.frombuffer(data, dtype="<i8", count=1, offset=pos)[0])
        pos += 8
        storage = needed.get(key)
        itemsize = storage.dtype.itemsize if storage else None
        if storage is None or count != storage.numel or pos + count * itemsize > len(data):
            raise _fail(path, f"storage {key} has {count} elements, which does not match its tensors")
        buffers[key] = np.frombuffer(data, dtype=storage.dtype, count=count, offset=pos)
        pos += count * itemsize
    if missing := sorted(set(needed) - set(buffers)):
        raise _fail(path, f"the data of storages {missing[:5]} is missing")

    result: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        if not isinstance(tensor, _Tensor):
            raise _fail(path, f"entry {name!r} is not a tensor")
        base = buffers[tensor.storage.key]
        itemsize = base.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[tensor.offset :],
            shape=tensor.shape,
            strides=tuple(s * itemsize for s in tensor.strides),
            writeable=False,
        )
        result[name] = np.array(view, dtype=base.dtype.newbyteorder("="), order="C")
    return result
