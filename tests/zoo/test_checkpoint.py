"""core.zoo.checkpoint reads real PyTorch checkpoints without torch and refuses anything but tensors."""
import io
import pickle
import struct
import zipfile

import numpy as np
import pytest

from core.errors import CheckpointError
from core.zoo import get
from core.zoo.checkpoint import load_checkpoint

# ---------------------------------------------------------------- hand-written pickles (no torch here)

class PickleWriter:
    """Emits protocol-2 pickle opcodes by hand, so tests can name any global without importing it."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")

    def glob(self, module, name):
        self.out += f"c{module}\n{name}\n".encode()
        return self

    def str(self, text):
        data = text.encode()
        self.out += b"X" + struct.pack("<I", len(data)) + data
        return self

    def int(self, value):
        self.out += b"J" + struct.pack("<i", value)
        return self

    def op(self, code):
        self.out += code
        return self

    def tuple_of_ints(self, values):
        self.op(b"(")
        for v in values:
            self.int(v)
        return self.op(b"t")

    def tensor(self, key, offset, size, stride, numel, storage="FloatStorage", legacy=False):
        """_rebuild_tensor_v2(persistent storage, offset, size, stride, False, OrderedDict())."""
        self.glob("torch._utils", "_rebuild_tensor_v2").op(b"(")
        self.op(b"(").str("storage").glob("torch", storage).str(key).str("cpu").int(numel)
        if legacy:
            self.op(b"N")
        self.op(b"t").op(b"Q")
        self.int(offset).tuple_of_ints(size).tuple_of_ints(stride).op(b"\x89")
        self.glob("collections", "OrderedDict").op(b")R")
        return self.op(b"t").op(b"R")

    def bytes(self):
        return bytes(self.out + b".")


def state_dict_pickle(tensors, legacy=False):
    """tensors: {name: (key, offset, size, stride, numel, storage)} -> OrderedDict pickle."""
    w = PickleWriter().glob("collections", "OrderedDict").op(b")R").op(b"(")
    for name, (key, offset, size, stride, numel, storage) in tensors.items():
        w.str(name).tensor(key, offset, size, stride, numel, storage, legacy)
    return w.op(b"u").bytes()


def write_zip_checkpoint(path, data_pkl, storages, byteorder=b"little"):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", byteorder)
        for key, raw in storages.items():
            z.writestr(f"archive/data/{key}", raw)
    return path


def write_legacy_checkpoint(path, main_pickle, storages):
    """torch<1.6 layout: magic, protocol, sys info, object, key list, then int64 numel + raw bytes per storage."""
    out = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(obj, out, protocol=2)
    out.write(main_pickle)
    pickle.dump(list(storages), out, protocol=2)
    for raw, itemsize in storages.values():
        out.write(struct.pack("<q", len(raw) // itemsize) + raw)
    path.write_bytes(out.getvalue())
    return path


# ---------------------------------------------------------------- the real files

def test_mobilenet_v2_checkpoint_legacy_format():
    weights = load_checkpoint(get("mobilenet_v2").weight_path())
    assert len(weights) == 314
    assert weights["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert weights["features.0.0.weight"].dtype == np.float32
    np.testing.assert_allclose(weights["features.0.0.weight"].ravel()[:3], [0.01318534, -0.00432129, 0.01482314],
                               atol=1e-8)
    assert weights["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)  # depthwise
    assert weights["features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert weights["classifier.1.weight"].shape == (1000, 1280)
    np.testing.assert_allclose(weights["classifier.1.bias"][:3], [0.04718802, 0.00994938, -0.03339512], atol=1e-8)
    assert weights["features.0.1.num_batches_tracked"].dtype == np.int64
    assert weights["features.0.1.num_batches_tracked"] == 1431430
    assert (weights["features.0.1.running_var"] > 0).all()


def test_mnist_checkpoint_zip_format():
    weights = load_checkpoint(get("mnist_cnn").weight_path())
    assert {k: v.shape for k, v in weights.items()} == {
        "features.0.weight": (32, 1, 3, 3), "features.0.bias": (32,),
        "features.3.weight": (64, 32, 3, 3), "features.3.bias": (64,),
        "classifier.0.weight": (128, 3136), "classifier.0.bias": (128,),
        "classifier.2.weight": (10, 128), "classifier.2.bias": (10,),
    }
    np.testing.assert_allclose(weights["features.0.weight"].ravel()[:3], [-0.2081532, -0.5147858, -0.1591317],
                               atol=1e-7)
    np.testing.assert_allclose(weights["classifier.2.bias"][:3], [-0.16654025, 0.05685604, 0.09170422], atol=1e-8)
    assert weights["features.0.weight"].flags.writeable  # a copy, not a view of the file buffer


# ---------------------------------------------------------------- layouts

def test_strides_and_offset_are_honoured(tmp_path):
    storage = np.arange(12, dtype=np.float32)
    pkl = state_dict_pickle({
        "transposed": ("0", 1, (3, 2), (1, 4), 12, "FloatStorage"),   # a transposed view starting at 1
        "plain": ("0", 0, (3, 4), (4, 1), 12, "FloatStorage"),
        "scalar": ("0", 5, (), (), 12, "FloatStorage"),
        "ints": ("1", 0, (2,), (1,), 2, "LongStorage"),
        "bf16": ("2", 0, (2,), (1,), 2, "BFloat16Storage"),
    })
    path = write_zip_checkpoint(tmp_path / "c.pth", pkl, {
        "0": storage.tobytes(),
        "1": np.array([7, -3], np.int64).tobytes(),
        "2": np.array([0x3F80, 0xC000], np.uint16).tobytes(),  # bfloat16 1.0, -2.0
    })
    w = load_checkpoint(path)
    np.testing.assert_array_equal(w["transposed"], [[1, 5], [2, 6], [3, 7]])
    np.testing.assert_array_equal(w["plain"], storage.reshape(3, 4))
    assert w["scalar"].shape == () and w["scalar"] == 5
    assert w["ints"].dtype == np.int64 and w["ints"].tolist() == [7, -3]
    assert w["bf16"].dtype == np.float32 and w["bf16"].tolist() == [1.0, -2.0]


def test_big_endian_storage(tmp_path):
    pkl = state_dict_pickle({"w": ("0", 0, (3,), (1,), 3, "FloatStorage")})
    path = write_zip_checkpoint(tmp_path / "be.pth", pkl, {"0": np.array([1.5, -2, 3], ">f4").tobytes()},
                                byteorder=b"big")
    np.testing.assert_array_equal(load_checkpoint(path)["w"], [1.5, -2, 3])


def test_legacy_format_written_by_hand(tmp_path):
    pkl = state_dict_pickle({"a.weight": ("k1", 2, (2, 2), (2, 1), 6, "FloatStorage")}, legacy=True)
    raw = np.arange(6, dtype=np.float32).tobytes()
    w = load_checkpoint(write_legacy_checkpoint(tmp_path / "old.pth", pkl, {"k1": (raw, 4)}))
    np.testing.assert_array_equal(w["a.weight"], [[2, 3], [4, 5]])


def test_tensor_reaching_past_its_storage_is_refused(tmp_path):
    pkl = state_dict_pickle({"w": ("0", 2, (3, 4), (4, 1), 12, "FloatStorage")})
    path = write_zip_checkpoint(tmp_path / "oob.pth", pkl, {"0": np.zeros(12, np.float32).tobytes()})
    with pytest.raises(CheckpointError, match="'w'.*past its storage"):
        load_checkpoint(path)


def test_storage_shorter_than_declared_is_refused(tmp_path):
    pkl = state_dict_pickle({"w": ("0", 0, (12,), (1,), 12, "FloatStorage")})
    path = write_zip_checkpoint(tmp_path / "short.pth", pkl, {"0": np.zeros(5, np.float32).tobytes()})
    with pytest.raises(CheckpointError, match="storage '0'"):
        load_checkpoint(path)


def test_missing_storage_member_is_refused(tmp_path):
    pkl = state_dict_pickle({"w": ("0", 0, (2,), (1,), 2, "FloatStorage")})
    path = write_zip_checkpoint(tmp_path / "nostorage.pth", pkl, {})
    with pytest.raises(CheckpointError, match="archive/data/0"):
        load_checkpoint(path)


# ---------------------------------------------------------------- unsafe and broken files

class RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os
        return os.system, (self.command,)


class RunsEval:
    def __init__(self, expression):
        self.expression = expression

    def __reduce__(self):
        return eval, (self.expression,)


def malicious_payloads(marker):
    shell = pickle.dumps(RunsShell(f"touch {marker}"), protocol=2)          # names posix.system
    # protocol 4 (STACK_GLOBAL) names builtins.eval; protocol 2 would spell it __builtin__.eval
    evaled = pickle.dumps(RunsEval(f"open({str(marker)!r}, 'w').close()"), protocol=4)
    handmade = PickleWriter().glob("os", "system").op(b"(").str(f"touch {marker}").op(b"tR").bytes()
    # A dangerous call hidden inside an otherwise valid state dict, after a real tensor.
    inside = (PickleWriter().glob("collections", "OrderedDict").op(b")R").op(b"(")
              .str("w").tensor("0", 0, (1,), (1,), 1)
              .str("evil").glob("builtins", "eval").op(b"(").str(f"open({str(marker)!r}, 'w').close()").op(b"tR")
              .op(b"u").bytes())
    return {"posix.system": (shell, "system"), "builtins.eval": (evaled, "builtins.eval"),
            "os.system": (handmade, "os.system"), "eval inside a state dict": (inside, "builtins.eval")}


@pytest.mark.parametrize("payload", ["posix.system", "builtins.eval", "os.system", "eval inside a state dict"])
def test_zip_checkpoint_naming_a_dangerous_global_is_refused_without_side_effect(tmp_path, payload):
    marker = tmp_path / "pwned"
    data_pkl, global_name = malicious_payloads(marker)[payload]
    path = write_zip_checkpoint(tmp_path / "evil.pth", data_pkl, {"0": np.zeros(1, np.float32).tobytes()})
    with pytest.raises(CheckpointError, match=rf"evil\.pth.*global .*{global_name}"):
        load_checkpoint(path)
    assert not marker.exists()


def test_legacy_checkpoint_with_dangerous_first_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_legacy.pth"
    path.write_bytes(pickle.dumps(RunsShell(f"touch {marker}"), protocol=2))
    with pytest.raises(CheckpointError, match="system"):
        load_checkpoint(path)
    assert not marker.exists()


def test_storage_type_cannot_be_called(tmp_path):
    # torch.FloatStorage resolves to a stand-in; REDUCE-ing it must fail cleanly, not call anything.
    pkl = PickleWriter().glob("torch", "FloatStorage").op(b"(").int(3).op(b"tR").bytes()
    path = write_zip_checkpoint(tmp_path / "call.pth", pkl, {})
    with pytest.raises(CheckpointError, match="call.pth.*malformed"):
        load_checkpoint(path)


def test_truncated_zip_is_refused(tmp_path):
    raw = get("mnist_cnn").weight_path().read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_checkpoint(path)


def test_truncated_legacy_file_is_refused(tmp_path):
    raw = get("mobilenet_v2").weight_path().read_bytes()
    for cut in (100, 30_000, len(raw) - 10):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError, match=f"cut{cut}.pth"):
            load_checkpoint(path)


def test_corrupted_zip_member_is_refused(tmp_path):
    raw = bytearray(get("mnist_cnn").weight_path().read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside a storage: the member's CRC no longer matches
    path = tmp_path / "flipped.pth"
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="flipped.pth"):
        load_checkpoint(path)


def test_not_a_checkpoint_and_missing_file(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pth"):
        load_checkpoint(text)
    with pytest.raises(CheckpointError, match="not found.*absent.pth"):
        load_checkpoint(tmp_path / "absent.pth")


def test_checkpoint_without_tensors_is_refused(tmp_path):
    path = write_zip_checkpoint(tmp_path / "empty.pth", pickle.dumps({"epoch": 3}, protocol=2), {})
    with pytest.raises(CheckpointError, match="no tensors"):
        load_checkpoint(path)
