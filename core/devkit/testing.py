"""A loopback "devkit" for tests and benchmarks: a real OpenSSH server on 127.0.0.1.

:func:`loopback_sshd` starts ``/usr/sbin/sshd -D -e`` on a free port with generated ed25519 host
and user keys, its own ``sshd_config``, ``authorized_keys`` and a ``known_hosts`` holding the host
key, all in a directory of its own; it yields a :class:`LoopbackDevkit` and stops the server on
exit. The transport, accelerator-mode and CLI tests and the accelerator bench all use it;
``scripts/ensure_sshd.sh`` installs openssh-server when it is missing. The "devkit" is this
machine, so its Python (``sys.executable``) and this checkout (:data:`REPO`, for ``PYTHONPATH``)
serve as the remote runtime.
"""
from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["SSHD", "REPO", "LoopbackDevkit", "loopback_sshd", "SshdUnavailable"]

SSHD = "/usr/sbin/sshd"
REPO = str(Path(__file__).resolve().parents[2])


class SshdUnavailable(RuntimeError):
    """sshd / ssh-keygen is missing, rejects the configuration, or does not come up."""


@dataclasses.dataclass(frozen=True)
class LoopbackDevkit:
    host: str
    port: int
    username: str
    key: str            # unencrypted ed25519 user key
    known_hosts: str
    log: str
    dir: str
    proc: subprocess.Popen
    host_public_key: str = ""         # "ssh-ed25519 AAAA..."
    key_with_passphrase: str = ""     # a second user key, encrypted with ``passphrase`` (when asked for)
    passphrase: str = ""

    def accelerator_kwargs(self, remote_root: str, **overrides) -> dict:
        """Keyword arguments for ``Model.execute_in_accelerator_mode`` against this server."""
        kwargs = dict(username=self.username, port=self.port, key_filename=self.key, known_hosts=self.known_hosts,
                      remote_root=remote_root, remote_python=sys.executable, remote_env={"PYTHONPATH": REPO})
        kwargs.update(overrides)
        return kwargs


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path, comment: str, passphrase: str = "") -> list[str]:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return path.with_suffix(".pub").read_text().split()[0:2]


def _account_locked(user: str) -> bool:
    try:
        for line in Path("/etc/shadow").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name == user:
                return rest.startswith("!")
    except OSError:
        pass
    return False


@contextlib.contextmanager
def loopback_sshd(directory: str | os.PathLike | None = None, timeout: float = 15.0,
                  passphrase: str = "") -> Iterator[LoopbackDevkit]:
    """Run sshd on 127.0.0.1 for the duration of the ``with`` block (files in ``directory``, a
    fresh temporary directory when None); with ``passphrase``, a second authorized user key
    encrypted with it. Raises :class:`SshdUnavailable`."""
    if not os.access(SSHD, os.X_OK) or shutil.which("ssh-keygen") is None:
        raise SshdUnavailable(f"{SSHD} or ssh-keygen is missing: run scripts/ensure_sshd.sh")
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="mixq-sshd-"))
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        user = getpass.getuser()
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        host_type, host_b64 = _keygen(d / "host_ed25519", "mixq-loopback-host")
        authorized = [" ".join(_keygen(d / "user_ed25519", "mixq-loopback"))]
        if passphrase:
            authorized.append(" ".join(_keygen(d / "user_pass_ed25519", "mixq-loopback", passphrase)))
        (d / "authorized_keys").write_text("\n".join(authorized) + "\n")
        os.chmod(d / "authorized_keys", 0o600)
        port = _free_port()
        options = [
            "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {d / 'host_ed25519'}", f"PidFile {d / 'sshd.pid'}",
            f"AuthorizedKeysFile {d / 'authorized_keys'}", "PubkeyAuthentication yes", "PasswordAuthentication yes",
            "PermitEmptyPasswords no", "KbdInteractiveAuthentication no",
            f"UsePAM {'yes' if _account_locked(user) else 'no'}", "StrictModes no", "PermitRootLogin yes",
            "UseDNS no", "MaxAuthTries 10", "MaxSessions 64", "MaxStartups 64:30:128", "LoginGraceTime 30",
            "X11Forwarding no", "PrintMotd no", "Subsystem sftp internal-sftp", "LogLevel VERBOSE",
            "PerSourcePenalties no",
        ]
        config = d / "sshd_config"

        def write_config():
            config.write_text("\n".join(options) + "\n")
            return subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL)

        check = write_config()
        if check.returncode != 0 and "PerSourcePenalties" in check.stderr:
            options.remove("PerSourcePenalties no")  # OpenSSH < 9.8
            check = write_config()
        if check.returncode != 0:
            raise SshdUnavailable(f"sshd rejects the configuration {config}:\n{check.stderr}")
        known_hosts = d / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_type} {host_b64}\n")
        log = d / "sshd.log"
        with open(log, "wb") as log_file:
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                    stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise SshdUnavailable(f"sshd exited with status {proc.returncode}:\n"
                                          f"{log.read_text(errors='replace')[-3000:]}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                        if s.recv(64).startswith(b"SSH-"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SshdUnavailable(f"sshd did not accept connections on 127.0.0.1:{port} within {timeout} s")
                time.sleep(0.05)
            yield LoopbackDevkit("127.0.0.1", port, user, str(d / "user_ed25519"), str(known_hosts), str(log),
                                 str(d), proc, f"{host_type} {host_b64}",
                                 str(d / "user_pass_ed25519") if passphrase else "", passphrase)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
