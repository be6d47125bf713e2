"""DevkitSession against a real OpenSSH server on 127.0.0.1 (see conftest.py).

The happy paths are real end to end. Faults are real where that is cheap (a TCP connection shut
down mid-transfer, a remote file corrupted on disk between write and verify, a process that must
be killed); a full remote disk is simulated at the SFTP layer (ENOSPC from SFTPFile.write).
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path

import pytest

from core.devkit.transport import DevkitSession, RetryPolicy
from core.errors import (
    DevkitAuthenticationError,
    DevkitCommandError,
    DevkitConnectionError,
    DevkitDiskFullError,
    DevkitError,
    DevkitHostKeyError,
    DevkitTimeoutError,
    DevkitTransferError,
    MixqError,
)

PY = shlex.quote(sys.executable)  # the devkit is this machine: its Python is ours


def _data_file(path: Path, size: int, seed: int = 0) -> Path:
    path.write_bytes(os.urandom(size) if seed == 0 else bytes((i * seed) % 251 for i in range(size)))
    return path


def _drop(dk: DevkitSession) -> None:
    """Cut the session's TCP connection for real (as a network failure would)."""
    dk._client.get_transport().sock.shutdown(socket.SHUT_RDWR)


# ----------------------------------------------------------------------------- connecting
def test_key_auth_runs_commands_and_cleans_up(make_session, remote_root):
    with make_session() as dk:
        assert dk.connected
        code, out, err = dk.run("echo hello; id -un")
        assert (code, err) == (0, "")
        assert out.split() == ["hello", dk.username]
        work = dk.create_workdir()
        assert os.path.dirname(work) == remote_root
        assert os.path.basename(work).startswith("mixq-") and os.path.isdir(work)
        assert oct(os.stat(work).st_mode & 0o777) == oct(0o700)
        assert dk.run("pwd", cwd=work).stdout.strip() == work
    assert not os.path.exists(work) and not dk.connected


def test_key_with_passphrase(make_session, sshd_server):
    with make_session(key_filename=sshd_server.key_with_passphrase, passphrase=sshd_server.passphrase) as dk:
        assert dk.run("true").exit_code == 0
    with pytest.raises(DevkitAuthenticationError, match="encrypted"):
        make_session(key_filename=sshd_server.key_with_passphrase).open()
    with pytest.raises(DevkitAuthenticationError, match="wrong passphrase"):
        make_session(key_filename=sshd_server.key_with_passphrase, passphrase="not-it").open()
    with pytest.raises(DevkitAuthenticationError, match="not found"):
        make_session(key_filename=os.path.join(sshd_server.dir, "no-such-key")).open()


def test_wrong_password_is_an_authentication_error(make_session):
    with pytest.raises(DevkitAuthenticationError, match="127.0.0.1") as info:
        make_session(key_filename=None, password="definitely-wrong-pw-1").open()
    assert isinstance(info.value, DevkitError) and isinstance(info.value, MixqError)


def test_passwords_and_passphrases_never_leak(make_session, sshd_server, remote_root, tmp_path, caplog, capsys):
    password = "S3cret-pw-" + uuid.uuid4().hex
    caplog.set_level(logging.DEBUG)
    for name in ("paramiko", "paramiko.transport", "mixq", "mixq.devkit"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    texts = []
    try:
        # failed password authentication
        with pytest.raises(DevkitAuthenticationError) as info:
            make_session(key_filename=None, password=password).open()
        texts += [str(info.value), repr(info.value), "".join(traceback.format_exception(info.value))]
        # wrong passphrase given as password (paramiko would try it as the passphrase too)
        with pytest.raises(DevkitAuthenticationError) as info:
            make_session(key_filename=sshd_server.key_with_passphrase, password=password, passphrase=password).open()
        texts += [str(info.value), repr(info.value), "".join(traceback.format_exception(info.value))]
        # a successful session that carries both secrets, with errors raised inside it
        dk = make_session(key_filename=sshd_server.key_with_passphrase, passphrase=sshd_server.passphrase,
                          password=password)
        texts += [repr(dk), str(dk), repr(vars(dk))]
        with dk:
            texts += [repr(dk), repr(vars(dk))]
            src = _data_file(tmp_path / "in.bin", 4096)
            dk.create_workdir()
            dk.upload(src, "in.bin")
            dk.download("in.bin", tmp_path / "back.bin")
            with pytest.raises(DevkitCommandError) as info:
                dk.run(f"echo {shlex.quote('not secret')} >&2; exit 4")
            texts += [str(info.value), repr(info.value), "".join(traceback.format_exception(info.value))]
            with pytest.raises(DevkitTransferError) as info:
                dk.download("no-such-file", tmp_path / "x")
            texts += [str(info.value), repr(info.value)]
    finally:
        for name in ("paramiko", "paramiko.transport", "mixq", "mixq.devkit"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    captured = capsys.readouterr()
    texts += [caplog.text, captured.out, captured.err]
    texts += [r.getMessage() for r in caplog.records]
    assert any("paramiko" in r.name for r in caplog.records), "paramiko's DEBUG log was not captured"
    blob = "\n".join(texts)
    assert password not in blob
    assert sshd_server.passphrase not in blob
    assert "S3cret-pw" not in blob


# ----------------------------------------------------------------------------- host keys
def test_unknown_host_key_is_refused_by_default(make_session, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(DevkitHostKeyError, match="accept_unknown_host") as info:
        make_session(known_hosts=empty).open()
    assert "127.0.0.1" in str(info.value) and "SHA256:" in str(info.value)
    with make_session(known_hosts=empty, accept_unknown_host=True) as dk:
        assert dk.run("echo ok").stdout == "ok\n"
    assert empty.read_text() == ""  # accepting never writes known_hosts


def test_mismatched_host_key_is_always_refused(make_session, sshd_server, tmp_path):
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True,
                   stdin=subprocess.DEVNULL, capture_output=True)
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd_server.port} " + " ".join(Path(f"{other}.pub").read_text().split()[:2]) + "\n")
    for accept in (False, True):
        with pytest.raises(DevkitHostKeyError, match="does not match"):
            make_session(known_hosts=kh, accept_unknown_host=accept).open()


def test_nothing_listening_is_a_connection_error_naming_host_and_port(make_session):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(DevkitConnectionError, match=f"127.0.0.1:{port}"):
            make_session(port=port).open()


# ----------------------------------------------------------------------------- transfers
def test_upload_download_round_trip(make_session, tmp_path):
    src = _data_file(tmp_path / "model.lm", 3 * 1024 * 1024 + 17)
    progress = []
    with make_session() as dk:
        work = dk.create_workdir()
        remote = dk.upload(src, "model.lm", callback=lambda done, total: progress.append((done, total)))
        assert remote == f"{work}/model.lm"
        assert Path(remote).read_bytes() == src.read_bytes()
        assert sorted(os.listdir(work)) == ["model.lm"]  # no temporary .part left
        assert progress[-1] == (src.stat().st_size, src.stat().st_size)
        assert dk.remote_sha256(remote) == hashlib.sha256(src.read_bytes()).hexdigest()
        back = dk.download(remote, tmp_path / "back.lm")
        assert Path(back).read_bytes() == src.read_bytes()
        with pytest.raises(DevkitTransferError, match="no-such"):
            dk.download("no-such.npz", tmp_path / "missing.npz")
        assert not (tmp_path / "missing.npz").exists()
        with pytest.raises(DevkitTransferError, match="no such file"):
            dk.upload(tmp_path / "absent.bin", "absent.bin")


def test_dropped_connection_during_upload_is_retried(make_session, tmp_path):
    src = _data_file(tmp_path / "big.bin", 8 * 1024 * 1024)
    drops = []
    with make_session() as dk:
        dk.create_workdir()

        def cut_once(done, total):
            if not drops and done > 1024 * 1024:
                drops.append(done)
                _drop(dk)

        remote = dk.upload(src, "big.bin", callback=cut_once)
        assert drops and Path(remote).read_bytes() == src.read_bytes()
        assert dk.connected  # reconnected


# paramiko's SFTP prefetch thread dies with EOFError on the cut connection (its own thread, harmless)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_dropped_connection_during_download_is_retried(make_session, tmp_path):
    src = _data_file(tmp_path / "big.bin", 8 * 1024 * 1024)
    drops = []
    with make_session() as dk:
        dk.create_workdir()
        dk.upload(src, "big.bin")

        def cut_once(done, total):
            if not drops and done > 1024 * 1024:
                drops.append(done)
                _drop(dk)

        back = dk.download("big.bin", tmp_path / "back.bin", callback=cut_once)
        assert drops and Path(back).read_bytes() == src.read_bytes()
    for thread in threading.enumerate():  # let that thread end inside this test
        if "_prefetch_thread" in thread.name:
            thread.join(timeout=5)


def test_connection_dropping_every_time_gives_transfer_error_and_still_cleans_up(make_session, tmp_path):
    src = _data_file(tmp_path / "big.bin", 4 * 1024 * 1024)
    drops = []

    def always_cut(done, total):
        if done > 256 * 1024 and dk.connected:
            drops.append(done)
            _drop(dk)

    dk = make_session(retry=RetryPolicy(attempts=2, base_delay=0.01))
    with pytest.raises(DevkitTransferError, match="after 2 attempts"):
        with dk:
            dk.create_workdir()
            dk.upload(src, "big.bin", callback=always_cut)
    assert len(drops) == 2
    # __exit__ found the connection gone and reconnected once to remove the work directory
    # (the remote_root fixture asserts it is gone)


def test_checksum_mismatch_on_upload_is_retried(make_session, tmp_path, monkeypatch):
    src = _data_file(tmp_path / "in.npz", 1024 * 1024)
    puts = []
    with make_session() as dk:
        dk.create_workdir()
        real_put = dk._put_file

        def put_then_corrupt_once(sftp, local, remote, callback):
            real_put(sftp, local, remote, callback)
            puts.append(remote)
            if len(puts) == 1:  # flip one byte of the written remote file before it is verified
                with open(remote, "r+b") as f:  # loopback: the remote file is local
                    f.seek(1000)
                    b = f.read(1)
                    f.seek(1000)
                    f.write(bytes([b[0] ^ 0xFF]))

        monkeypatch.setattr(dk, "_put_file", put_then_corrupt_once)
        remote = dk.upload(src, "in.npz")
        assert len(puts) == 2
        assert Path(remote).read_bytes() == src.read_bytes()
        assert sorted(os.listdir(os.path.dirname(remote))) == ["in.npz"]


def test_checksum_mismatch_on_download_is_retried_then_gives_up(make_session, tmp_path, monkeypatch):
    src = _data_file(tmp_path / "out.npz", 512 * 1024)
    gets = []
    with make_session() as dk:
        dk.create_workdir()
        dk.upload(src, "out.npz")
        real_get = dk._get_file
        corrupt_until = [1]

        class Flipper:  # corrupts the first chunk received, as a faulty link would
            def __init__(self, sink):
                self.sink, self.first = sink, True

            def write(self, data):
                if self.first:
                    self.first = False
                    data = bytes([data[0] ^ 1]) + data[1:]
                return self.sink.write(data)

        def get_maybe_corrupt(sftp, remote, fileobj, callback):
            gets.append(remote)
            real_get(sftp, remote, Flipper(fileobj) if len(gets) <= corrupt_until[0] else fileobj, callback)

        monkeypatch.setattr(dk, "_get_file", get_maybe_corrupt)
        back = dk.download("out.npz", tmp_path / "back.npz")
        assert len(gets) == 2 and Path(back).read_bytes() == src.read_bytes()

        gets.clear()
        corrupt_until[0] = 99
        with pytest.raises(DevkitTransferError, match="checksum mismatch"):
            dk.download("out.npz", tmp_path / "never.npz")
        assert len(gets) == 3 and not (tmp_path / "never.npz").exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".never")] == []


def test_remote_disk_full_is_reported_without_retrying(make_session, tmp_path, monkeypatch):
    import paramiko

    src = _data_file(tmp_path / "model.lm", 2 * 1024 * 1024)
    calls = []
    real_write = paramiko.sftp_file.SFTPFile.write

    def write_until_full(self, data):
        calls.append(len(data))
        if sum(calls) > 1024 * 1024:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    with make_session() as dk:
        work = dk.create_workdir()
        monkeypatch.setattr(paramiko.sftp_file.SFTPFile, "write", write_until_full)
        with pytest.raises(DevkitDiskFullError, match="no space left on devkit 127.0.0.1"):
            dk.upload(src, "model.lm")
        monkeypatch.undo()
        assert os.listdir(work) == []  # the partial file was removed
        n_writes = len(calls)
        assert sum(calls[:-1]) <= 1024 * 1024 + 65536 and n_writes < 100  # one attempt only


def test_really_full_remote_disk(make_session, tmp_path):
    """A real full filesystem (a 512 KiB tmpfs) where mounting is allowed: OpenSSH's sftp-server
    reports ENOSPC as a bare failure, so the transport asks df."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
                             capture_output=True, stdin=subprocess.DEVNULL).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); "
                    "test_remote_disk_full_is_reported_without_retrying covers the ENOSPC path")
    try:
        src = _data_file(tmp_path / "model.lm", 2 * 1024 * 1024)
        with make_session(remote_root=str(mnt)) as dk:
            work = dk.create_workdir()
            with pytest.raises(DevkitDiskFullError):
                dk.upload(src, "model.lm")
            assert os.listdir(work) == []
        assert os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# ----------------------------------------------------------------------------- commands
def test_failing_command_raises_with_exit_code_and_stderr_tail(make_session):
    with make_session() as dk:
        cmd = f"{PY} -c \"import sys; sys.stderr.write('x' * 5000 + 'boom' * 10); sys.exit(3)\""
        with pytest.raises(DevkitCommandError) as info:
            dk.run(cmd)
        e = info.value
        assert e.exit_code == 3 and "boom" in str(e) and "status 3" in str(e)
        assert e.stderr_tail.endswith("boom" * 10) and len(e.stderr_tail) == 2000
        assert "x" * 2001 not in str(e) and "__mixq_pid__" not in str(e)
        code, out, err = dk.run(cmd, check=False)
        assert code == 3 and out == "" and err.endswith("boom" * 10) and len(err) == 5040
        # a crash (SIGABRT) is an error too
        with pytest.raises(DevkitCommandError) as info:
            dk.run(f"{PY} -c 'import os; os.abort()'")
        assert info.value.exit_code in (134, -1)


def test_run_with_cwd_and_environment(make_session, tmp_path):
    with make_session() as dk:
        work = dk.create_workdir()
        res = dk.run('echo "$MIXQ_A|$MIXQ_B|$(pwd)"; echo "$MIXQ_A" >&2', cwd=work,
                     env={"MIXQ_A": "it's a value", "MIXQ_B": "x y"})
        assert res == (0, f"it's a value|x y|{work}\n", "it's a value\n")
        assert dk.run("cat", timeout=5).stdout == ""  # stdin is closed, nothing hangs
        with pytest.raises(ValueError):
            dk.run("true", env={"BAD NAME": "1"})
        with pytest.raises(DevkitTransferError, match="missing-dir"):
            dk.download(dk.upload(__file__, "t.py"), tmp_path / "missing-dir" / "t.py")


def test_missing_runtime_is_a_command_error(make_session):
    with make_session() as dk:
        with pytest.raises(DevkitCommandError, match="not found") as info:
            dk.run("no-such-runtime run model.lm in.npz out.npz")
        assert info.value.exit_code == 127 and "no-such-runtime" in info.value.stderr_tail


def _processes_with(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def test_timeout_kills_the_remote_command(make_session):
    marker = f"mixq-timeout-{uuid.uuid4().hex}"
    with make_session() as dk:
        t0 = time.monotonic()
        with pytest.raises(DevkitTimeoutError, match="within 1 s"):
            # a child of a child: the whole process group must go
            dk.run(f"{PY} -c 'import subprocess, sys, time; subprocess.Popen([sys.executable, \"-c\", "
                   f"\"import time; time.sleep(30)\", \"{marker}\"]); time.sleep(30)' {marker}", timeout=1)
        assert time.monotonic() - t0 < 8
        deadline = time.monotonic() + 5
        while _processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_with(marker) == []
        assert dk.run("echo still usable").exit_code == 0


# ----------------------------------------------------------------------------- cleanup
def test_workdirs_removed_after_an_error_in_the_block(make_session):
    with pytest.raises(RuntimeError):
        with make_session() as dk:
            a, b = dk.create_workdir(), dk.create_workdir()
            assert a != b and os.path.isdir(a) and os.path.isdir(b)
            raise RuntimeError("caller failed")
    assert not os.path.exists(a) and not os.path.exists(b)


def test_workdir_removed_when_the_connection_is_gone_at_exit(make_session):
    with make_session() as dk:
        work = dk.create_workdir()
        _drop(dk)
        time.sleep(0.1)
    assert not os.path.exists(work)


def test_default_remote_root_is_tmp(make_session):
    with make_session(remote_root="/tmp") as dk:
        work = dk.create_workdir()
        assert work.startswith("/tmp/mixq-") and os.path.isdir(work)
    assert not os.path.exists(work)


def test_only_own_workdirs_can_be_removed(make_session):
    with make_session() as dk:
        with pytest.raises(ValueError):
            dk.remove_workdir("/tmp")
        with pytest.raises(ValueError, match="work directory"):
            dk.upload(__file__, "relative-without-workdir.py")


# ----------------------------------------------------------------------------- no server needed
def test_retry_policy_backs_off_exponentially():
    p = RetryPolicy(attempts=5, base_delay=0.5, max_delay=3.0)
    assert [p.delay(k) for k in range(1, 5)] == [0.5, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_session_repr_hides_secrets():
    dk = DevkitSession("devkit.local", username="sima", password="hunter2-pw", passphrase="pp-hunter3")
    text = repr(dk) + str(dk) + repr(vars(dk))
    assert "hunter2-pw" not in text and "pp-hunter3" not in text
    assert "sima@devkit.local:22" in repr(dk)


def test_import_core_devkit_does_not_import_paramiko():
    code = ("import sys, core, core.devkit, core.devkit.transport; "
            "print([m for m in ('paramiko', 'cryptography', 'nacl', 'bcrypt') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
