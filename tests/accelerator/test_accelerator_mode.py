"""``Model.execute_in_accelerator_mode`` against a real OpenSSH server on 127.0.0.1 (the
"devkit" is this machine; its Python runs the runtime). Happy paths are real end to end; each
fault is real where that is cheap (refused port, wrong password, missing interpreter, a corrupted
.lm on the devkit, a runtime that sleeps past the limit, a TCP connection shut down
mid-transfer); a full remote disk is simulated at the SFTP layer (ENOSPC from SFTPFile.write).
Every test checks (through the ``remote_root`` fixture) that no remote ``mixq-*`` directory
remains."""
from __future__ import annotations

import errno
import logging
import os
import socket

import numpy as np
import pytest

from core.devkit.transport import DevkitSession
from core.errors import (
    DevkitAuthenticationError,
    DevkitCommandError,
    DevkitConnectionError,
    DevkitDiskFullError,
    DevkitHostKeyError,
    DevkitTimeoutError,
    DevkitTransferError,
    InputError,
)


def _samples(x, n, per=1):
    return [{"input": x[i * per:(i + 1) * per]} for i in range(n)]


def _assert_identical(model, samples, outputs):
    assert len(outputs) == len(samples)
    for sample, got in zip(samples, outputs):
        want = model.execute(sample, fast_mode=False)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def _no_workdirs(root):
    assert [p for p in os.listdir(root) if p.startswith("mixq-")] == []


# ----------------------------------------------------------------------------- bit identity
@pytest.mark.parametrize("batch_size", [1, 4])
def test_mobilenet_v2_int8_bit_identical(mobilenet, accel_kwargs, remote_root, batch_size):
    model, x = mobilenet
    samples = _samples(x, 4)
    outputs = model.execute_in_accelerator_mode(samples, "127.0.0.1", batch_size=batch_size, **accel_kwargs())
    _assert_identical(model, samples, outputs)
    assert outputs[0][0].shape == (1, 1000)
    _no_workdirs(remote_root)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_mixed_int8_int16_mnist_bit_identical(mnist_models, digits, accel_kwargs, remote_root, batch_size):
    model = mnist_models["mixed"]
    precisions = {model.program.tensors[n.outputs[0]].bits for n in model.program.graph.nodes}
    assert precisions == {8, 16}
    samples = _samples(digits, 6)                       # batch 4: groups of 4 and 2
    outputs = model.execute_in_accelerator_mode(samples, "127.0.0.1", batch_size=batch_size,
                                                compress=batch_size == 1, **accel_kwargs())
    _assert_identical(model, samples, outputs)
    _no_workdirs(remote_root)


def test_one_dict_and_samples_with_their_own_batch(mnist_models, digits, accel_kwargs):
    model = mnist_models["int8"]
    one = model.execute_in_accelerator_mode({"input": digits[:1]}, "127.0.0.1", **accel_kwargs())
    _assert_identical(model, [{"input": digits[:1]}], one)
    samples = _samples(digits, 3, per=2)
    _assert_identical(model, samples, model.execute_in_accelerator_mode(samples, "127.0.0.1", batch_size=2,
                                                                        **accel_kwargs()))


def test_bad_inputs_fail_before_connecting(mnist_models, digits, accel_kwargs):
    model = mnist_models["int8"]
    with pytest.raises(InputError, match="unknown input"):
        model.execute_in_accelerator_mode([{"image": digits[:1]}], "127.0.0.1", **accel_kwargs(port=1))
    with pytest.raises(InputError, match="same shapes"):
        model.execute_in_accelerator_mode([{"input": digits[:1]}, {"input": digits[:2]}], "127.0.0.1",
                                          **accel_kwargs(port=1))
    with pytest.raises(InputError, match="no samples"):
        model.execute_in_accelerator_mode([], "127.0.0.1", **accel_kwargs())


# ----------------------------------------------------------------------------- faults
def test_unreachable_port(mnist_models, digits, accel_kwargs, remote_root):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                       # bound, not listening: refused
        with pytest.raises(DevkitConnectionError, match=f"127.0.0.1:{port}"):
            mnist_models["int8"].execute_in_accelerator_mode(_samples(digits, 1), "127.0.0.1",
                                                             **accel_kwargs(port=port))
    _no_workdirs(remote_root)


def test_authentication_failure_never_shows_the_password(mnist_models, digits, accel_kwargs, remote_root, caplog,
                                                        capsys):
    secret = "Wr0ng-Pa55word-Zx8"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DevkitAuthenticationError) as e:
        mnist_models["int8"].execute_in_accelerator_mode(_samples(digits, 1), "127.0.0.1",
                                                         **accel_kwargs(key_filename=None, password=secret))
    assert "127.0.0.1" in str(e.value)
    out, err = capsys.readouterr()
    for text in (str(e.value), repr(e.value), caplog.text, out, err):
        assert secret not in text
    _no_workdirs(remote_root)


def test_unknown_host_key_is_refused(mnist_models, digits, accel_kwargs, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(DevkitHostKeyError):
        mnist_models["int8"].execute_in_accelerator_mode(_samples(digits, 1), "127.0.0.1",
                                                         **accel_kwargs(known_hosts=str(empty)))


def test_runtime_missing(mnist_models, digits, accel_kwargs, remote_root):
    with pytest.raises(DevkitCommandError, match="command not found") as e:
        mnist_models["int8"].execute_in_accelerator_mode(_samples(digits, 1), "127.0.0.1",
                                                         **accel_kwargs(remote_python="no-such-python"))
    assert e.value.exit_code == 127 and "no-such-python" in e.value.stderr_tail
    assert "no-such-python" in str(e.value)
    _no_workdirs(remote_root)


def test_runtime_crash_on_a_corrupted_lm(mnist_models, digits, accel_kwargs, remote_root, monkeypatch):
    real_upload = DevkitSession.upload

    def upload_then_corrupt(self, local, remote, callback=None):
        path = real_upload(self, local, remote, callback)
        if path.endswith("model.lm"):                    # loopback: the remote file is local
            with open(path, "r+b") as f:
                f.seek(100)
                b = f.read(1)
                f.seek(100)
                f.write(bytes([b[0] ^ 0xFF]))
        return path

    monkeypatch.setattr(DevkitSession, "upload", upload_then_corrupt)
    with pytest.raises(DevkitCommandError, match="exited with status 1") as e:
        mnist_models["int8"].execute_in_accelerator_mode(_samples(digits, 1), "127.0.0.1", **accel_kwargs())
    assert e.value.exit_code == 1
    assert "mixq-devkit: error:" in e.value.stderr_tail and "not a valid .lm file" in e.value.stderr_tail
    assert "header checksum mismatch" in str(e.value)
    _no_workdirs(remote_root)


def test_timeout(mnist_models, digits, accel_kwargs, remote_root):
    import time

    t = time.perf_counter()
    with pytest.raises(DevkitTimeoutError, match="did not finish within 3 s and was killed"):
        mnist_models["int8"].execute_in_accelerator_mode(
            _samples(digits, 1), "127.0.0.1",
            **accel_kwargs(timeout=3, remote_env={"PYTHONPATH": accel_kwargs()["remote_env"]["PYTHONPATH"],
                                                  "MIXQ_DEVKIT_TEST_SLEEP": "60"}))
    assert time.perf_counter() - t < 30
    _no_workdirs(remote_root)


def _drop(dk):
    dk._client.get_transport().sock.shutdown(socket.SHUT_RDWR)


def _dropping_put(monkeypatch, times):
    real_put = DevkitSession._put_file
    drops = []

    def put(self, sftp, local, remote, callback):
        def cut(done, total):
            if callback:
                callback(done, total)
            if len(drops) < times and "model.lm" in remote and done > 64 * 1024 and self.connected:
                drops.append(done)
                _drop(self)

        real_put(self, sftp, local, remote, cut)

    monkeypatch.setattr(DevkitSession, "_put_file", put)
    return drops


def test_connection_dropped_mid_transfer_is_retried(mnist_models, digits, accel_kwargs, remote_root, monkeypatch):
    model = mnist_models["int8"]
    drops = _dropping_put(monkeypatch, times=1)
    samples = _samples(digits, 2)
    outputs = model.execute_in_accelerator_mode(samples, "127.0.0.1", compress=False, **accel_kwargs())
    assert len(drops) == 1
    _assert_identical(model, samples, outputs)
    _no_workdirs(remote_root)


def test_connection_dropping_every_time(mnist_models, digits, accel_kwargs, remote_root, monkeypatch):
    drops = _dropping_put(monkeypatch, times=99)
    with pytest.raises(DevkitTransferError, match="upload of .*model.lm.* failed after 2 attempts"):
        mnist_models["int8"].execute_in_accelerator_mode(_samples(digits, 1), "127.0.0.1", compress=False,
                                                         **accel_kwargs())
    assert len(drops) == 2
    _no_workdirs(remote_root)


def test_remote_disk_full(mnist_models, digits, accel_kwargs, remote_root, monkeypatch):
    import paramiko

    real_write = paramiko.sftp_file.SFTPFile.write
    written = []

    def write_until_full(self, data):
        written.append(len(data))
        if sum(written) > 128 * 1024:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(paramiko.sftp_file.SFTPFile, "write", write_until_full)
    with pytest.raises(DevkitDiskFullError, match="no space left on devkit 127.0.0.1:.*model.lm"):
        mnist_models["int8"].execute_in_accelerator_mode(_samples(digits, 1), "127.0.0.1", compress=False,
                                                         **accel_kwargs())
    _no_workdirs(remote_root)


def test_run_devkit_command(devkit, mnist_models, tmp_path, capsys):
    """`mixq run-devkit` against the loopback OpenSSH server: bit-identical to local execution."""
    import sys

    import numpy as np

    from core.cli import main
    from core.devkit.testing import REPO

    mnist_models["int8"].save("m", str(tmp_path))
    x = np.random.default_rng(0).normal(size=(3, 1, 28, 28)).astype(np.float32)
    np.savez(tmp_path / "in.npz", input=x)
    rc = main(["run-devkit", str(tmp_path / "m.sima"), "--devkit", devkit.host, "--port", str(devkit.port),
               "--user", devkit.username, "--key", devkit.key, "--known-hosts", devkit.known_hosts,
               "--remote-python", sys.executable, "--remote-pythonpath", REPO, "--data", str(tmp_path / "in.npz"),
               "--outputs", str(tmp_path / "out.npz"), "--check"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "3 samples on 127.0.0.1" in out and "bit-identical to local execution" in out
    with np.load(tmp_path / "out.npz") as f:
        assert f["output_0"].shape == (3, 10)
