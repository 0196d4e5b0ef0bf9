"""Safe checkpoint loading, atomic saving and checkpoint path expansion."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import safetensors.torch
import torch

from weightspace.io import (
    SUPPORTED_SUFFIXES,
    CheckpointError,
    atomic_write,
    expand_checkpoint_paths,
    load_metadata,
    load_state_dict,
    save_state_dict,
)


def _state_dict() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    # Deliberately not in alphabetical order: the order must survive a round trip.
    return {
        "layer.weight": torch.randn(4, 3, generator=generator),
        "layer.bias": torch.randn(4, generator=generator, dtype=torch.float64),
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        "a.index": torch.arange(5, dtype=torch.int64),
    }


def _assert_bit_exact(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(actual) == list(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        assert actual[key].shape == tensor.shape, key
        assert torch.equal(actual[key], tensor), key


def _leftover_temporaries(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_round_trip_is_bit_exact(tmp_path: Path, suffix: str) -> None:
    state = _state_dict()
    path = save_state_dict(state, tmp_path / f"model{suffix}")
    assert path == tmp_path / f"model{suffix}"
    loaded = load_state_dict(path)
    assert type(loaded) is dict
    _assert_bit_exact(loaded, state)
    assert _leftover_temporaries(tmp_path) == []


def test_safetensors_metadata_and_shared_storage(tmp_path: Path) -> None:
    weight = torch.randn(3, 3)
    # Tied weights and a non-contiguous view: safetensors refuses both as is.
    state = {"encoder.weight": weight, "decoder.weight": weight, "transposed": weight.t()}
    path = save_state_dict(state, tmp_path / "tied.safetensors", metadata={"family": "mlp"})
    loaded = load_state_dict(path)
    _assert_bit_exact(loaded, state)
    assert load_metadata(path) == {"family": "mlp"}
    assert load_metadata(save_state_dict(state, tmp_path / "tied.pt")) == {}


def test_safetensors_written_by_other_tools_loads(tmp_path: Path) -> None:
    state = _state_dict()
    path = tmp_path / "external.safetensors"
    safetensors.torch.save_file(state, path)
    loaded = load_state_dict(path)
    assert sorted(loaded) == sorted(state)
    for key in state:
        assert torch.equal(loaded[key], state[key])


@pytest.mark.parametrize("wrapper", ["state_dict", "model_state_dict", "model", "weights"])
def test_nested_state_dict_is_unwrapped(
    tmp_path: Path, wrapper: str, caplog: pytest.LogCaptureFixture
) -> None:
    state = _state_dict()
    path = tmp_path / "checkpoint.ckpt"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}, wrapper: OrderedDict(state)}, path)
    with caplog.at_level(logging.INFO, logger="weightspace.io"):
        loaded = load_state_dict(path)
    _assert_bit_exact(loaded, state)
    assert repr(wrapper) in caplog.text


def test_module_prefix_is_stripped_only_when_on_every_key(tmp_path: Path) -> None:
    state = _state_dict()
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{key}": value for key, value in state.items()}}, path)
    _assert_bit_exact(load_state_dict(path), state)

    mixed = {"module.a": torch.zeros(1), "b": torch.ones(1)}
    torch.save(mixed, tmp_path / "mixed.bin")
    assert list(load_state_dict(tmp_path / "mixed.bin")) == ["module.a", "b"]


# --------------------------------------------------------------------------- refusing code


def _write_marker(path: str) -> None:
    Path(path).write_text("code from the checkpoint ran")


class Payload:
    """Unpickling this object calls ``_write_marker``: a stand-in for malware."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_write_marker, (self.marker,))


def test_pickled_python_object_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    path = tmp_path / "malicious.pt"
    torch.save({"w": torch.zeros(1), "obj": Payload(marker)}, path)
    assert not marker.exists()

    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert "Python objects other than tensors" in message
    assert "refuses to execute code" in message
    assert "_write_marker" in message
    assert "torch.save(model.state_dict(), path)" in message and ".safetensors" in message
    assert not marker.exists()

    # Control: the same file *does* run code with an unsafe load, so the
    # assertion above is meaningful.
    torch.load(path, weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file(tmp_path: Path, suffix: str) -> None:
    path = save_state_dict(_state_dict(), tmp_path / f"model{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable") as info:
        load_state_dict(path)
    assert str(info.value).startswith(str(path))
    assert info.value.__cause__ is not None


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all" * 10])
def test_garbage_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="unreadable") as info:
        load_state_dict(path)
    assert str(info.value).startswith(str(path))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.pt"
    with pytest.raises(CheckpointError, match="not found") as info:
        load_state_dict(path)
    assert str(info.value).startswith(str(path))


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "model.h5"
    path.write_bytes(b"\x00")
    with pytest.raises(CheckpointError, match=r"'\.h5'.*\.safetensors, \.pt, \.pth") as info:
        load_state_dict(path)
    assert str(info.value).startswith(str(path))

    target = tmp_path / "out.npz"
    with pytest.raises(CheckpointError, match="Supported suffixes"):
        save_state_dict(_state_dict(), target)
    assert not target.exists()
    # .bin and .ckpt are read-only formats here.
    with pytest.raises(CheckpointError):
        save_state_dict(_state_dict(), tmp_path / "out.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.h5"]


def test_not_a_tensor_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="found an object of type list"):
        load_state_dict(path)

    path = tmp_path / "config.pt"
    torch.save({"lr": 0.1, "epochs": 3}, path)
    with pytest.raises(CheckpointError, match=r"top-level keys \['lr', 'epochs'\]") as info:
        load_state_dict(path)
    assert str(info.value).startswith(str(path))


def test_non_tensor_value_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "stray.pt"
    torch.save({"w": torch.zeros(1), "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="'epoch' is of type int"):
        load_state_dict(path)

    path = tmp_path / "nested.pt"
    torch.save({"state_dict": {"w": torch.zeros(1), "note": "hi"}}, path)
    with pytest.raises(CheckpointError, match="state_dict.'note'"):
        load_state_dict(path)

    with pytest.raises(CheckpointError, match="'epoch' is of type int"):
        save_state_dict({"w": torch.zeros(1), "epoch": 3}, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


# --------------------------------------------------------------------------- atomicity


def test_atomic_save_pt_failure_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def partial_torch_save(obj, handle, *args, **kwargs) -> None:
        handle.write(b"PK\x03\x04 partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", partial_torch_save)
    target = tmp_path / "model.pt"
    with pytest.raises(OSError, match="simulated"):
        save_state_dict(_state_dict(), target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_save_safetensors_failure_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = save_state_dict({"old": torch.ones(2)}, tmp_path / "model.safetensors")
    old_bytes = target.read_bytes()

    def partial_save_file(tensors, filename, metadata=None) -> None:
        Path(filename).write_bytes(b"\x10\x00\x00")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(safetensors.torch, "save_file", partial_save_file)
    with pytest.raises(OSError, match="simulated"):
        save_state_dict(_state_dict(), target)
    assert target.read_bytes() == old_bytes
    assert _leftover_temporaries(tmp_path) == []


def test_atomic_write_text_and_failure(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "summary.txt"
    with atomic_write(target, "w") as handle:
        handle.write("hello")
        assert not target.exists()  # nothing visible before the block ends
    assert target.read_text() == "hello"

    with pytest.raises(RuntimeError), atomic_write(target, "w") as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "hello"
    assert _leftover_temporaries(target.parent) == []

    with pytest.raises(ValueError, match="'w' mode"), atomic_write(target, "a"):
        pass


# --------------------------------------------------------------------------- path expansion


def _touch_checkpoints(root: Path) -> dict[str, Path]:
    files = {
        "a": root / "a.pt",
        "b": root / "zoo" / "b.safetensors",
        "c": root / "zoo" / "deep" / "c.pth",
        "notes": root / "zoo" / "notes.txt",
        "hidden_tmp": root / "zoo" / ".b.safetensors.1234.tmp",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return files


def test_expand_files_directories_and_globs(tmp_path: Path) -> None:
    files = _touch_checkpoints(tmp_path)

    assert expand_checkpoint_paths([files["a"]]) == [files["a"]]
    # An explicit file is kept whatever its suffix; loading checks it.
    assert expand_checkpoint_paths([str(files["notes"])]) == [files["notes"]]

    assert expand_checkpoint_paths([tmp_path / "zoo"]) == [files["b"], files["c"]]

    pattern = str(tmp_path / "**" / "*")
    expected = sorted([files["a"], files["b"], files["c"]])
    assert expand_checkpoint_paths([pattern]) == expected
    assert expand_checkpoint_paths([str(tmp_path / "*.pt")]) == [files["a"]]

    # Duplicates keep their first position.
    combined = expand_checkpoint_paths([files["b"], tmp_path / "zoo", files["a"], files["b"]])
    assert combined == [files["b"], files["c"], files["a"]]

    # Sorted as strings (like sorted(glob(...))), the same on every Python.
    (tmp_path / "x-y").mkdir()
    (tmp_path / "x").mkdir()
    (tmp_path / "x-y" / "m.pt").write_bytes(b"")
    (tmp_path / "x" / "m.pt").write_bytes(b"")
    assert expand_checkpoint_paths([str(tmp_path / "x*" / "*.pt")]) == [
        tmp_path / "x-y" / "m.pt",
        tmp_path / "x" / "m.pt",
    ]

    # A single string is one pattern, not a sequence of characters.
    assert expand_checkpoint_paths(str(files["a"])) == [files["a"]]
    assert set(SUPPORTED_SUFFIXES) >= {".safetensors", ".pt", ".pth", ".bin", ".ckpt"}


def test_expand_errors_name_the_pattern(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    with pytest.raises(CheckpointError, match="no such file") as info:
        expand_checkpoint_paths([missing])
    assert str(missing) in str(info.value)

    pattern = str(tmp_path / "*.safetensors")
    with pytest.raises(CheckpointError, match="matches no checkpoint") as info:
        expand_checkpoint_paths([pattern])
    assert pattern in str(info.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no checkpoints here")
    with pytest.raises(CheckpointError, match="contains no checkpoint") as info:
        expand_checkpoint_paths([empty])
    assert str(empty) in str(info.value)


def test_save_creates_parent_directories_with_normal_permissions(tmp_path: Path) -> None:
    target = save_state_dict(_state_dict(), tmp_path / "a" / "b" / "model.safetensors")
    assert target.is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
