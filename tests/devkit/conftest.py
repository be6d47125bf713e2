"""A real OpenSSH server on 127.0.0.1 for the devkit transport tests.

The "devkit" is this machine over loopback: one ``/usr/sbin/sshd -D -e`` per test session, on a
free port, with generated ed25519 host and user keys (one user key with a passphrase), its own
sshd_config, authorized_keys and known_hosts in a temp dir. ``scripts/ensure_sshd.sh`` installs
openssh-server when it is missing (CI runs it before pytest); if sshd is still missing the tests
fail with a message saying so.
"""
from __future__ import annotations

import dataclasses
import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
REPO = Path(__file__).resolve().parents[2]
PASSPHRASE = "Kx7-passphrase-Zq9"  # of the encrypted test user key; the leak test looks for it


@dataclasses.dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    username: str
    key: str                 # unencrypted ed25519 user key
    key_with_passphrase: str
    passphrase: str
    known_hosts: str         # holds the host key for [127.0.0.1]:port
    host_public_key: str     # "ssh-ed25519 AAAA..."
    log: str                 # sshd's stderr
    dir: str
    proc: subprocess.Popen


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path, passphrase: str = "", comment: str = "mixq-test") -> list[str]:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return path.with_suffix(".pub").read_text().split()[0:2]


def _account_locked(user: str) -> bool:
    """sshd with UsePAM no refuses even key logins to accounts whose password starts with '!'."""
    try:
        for line in Path("/etc/shadow").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name == user:
                return rest.startswith("!")
    except OSError:
        pass
    return False


def _wait_for_banner(port: int, proc: subprocess.Popen, log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited with status {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError as e:
            last = e
        time.sleep(0.05)
    pytest.fail(f"sshd did not accept connections on 127.0.0.1:{port} within {timeout} s ({last}):\n"
                f"{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory) -> SshServer:
    if not os.access(SSHD, os.X_OK) or shutil.which("ssh-keygen") is None:
        pytest.fail(f"{SSHD} or ssh-keygen is missing: run scripts/ensure_sshd.sh (as root it installs "
                    "openssh-server and openssh-client; `make test` does this)")
    d = tmp_path_factory.mktemp("sshd")
    user = getpass.getuser()
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege-separation directory
    host_type, host_b64 = _keygen(d / "host_ed25519", comment="mixq-test-host")
    user_pub = _keygen(d / "user_ed25519")
    pass_pub = _keygen(d / "user_pass_ed25519", passphrase=PASSPHRASE)
    (d / "authorized_keys").write_text(f"{' '.join(user_pub)}\n{' '.join(pass_pub)}\n")
    os.chmod(d / "authorized_keys", 0o600)

    port = _free_port()
    options = [
        "ListenAddress 127.0.0.1",
        f"Port {port}",
        f"HostKey {d / 'host_ed25519'}",
        f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication yes",  # only ever used with a wrong password (the failure path)
        "PermitEmptyPasswords no",
        "KbdInteractiveAuthentication no",
        f"UsePAM {'yes' if _account_locked(user) else 'no'}",
        "StrictModes no",
        "PermitRootLogin yes",
        "UseDNS no",
        "MaxAuthTries 10",
        "MaxSessions 64",
        "MaxStartups 64:30:128",
        "LoginGraceTime 30",
        "X11Forwarding no",
        "PrintMotd no",
        "Subsystem sftp internal-sftp",
        "LogLevel VERBOSE",
        "PerSourcePenalties no",  # OpenSSH >= 9.8 would otherwise lock out 127.0.0.1 after the failure tests
    ]
    config = d / "sshd_config"

    def write_config():
        config.write_text("\n".join(options) + "\n")
        return subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True, stdin=subprocess.DEVNULL)

    check = write_config()
    if check.returncode != 0 and "PerSourcePenalties" in check.stderr:
        options.remove("PerSourcePenalties no")  # older OpenSSH (Debian 12 has 9.2)
        check = write_config()
    if check.returncode != 0:
        pytest.fail(f"sshd rejects the test configuration {config}:\n{check.stderr}")

    known_hosts = d / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_type} {host_b64}\n")
    log = d / "sshd.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_for_banner(port, proc, log)
        yield SshServer(
            host="127.0.0.1", port=port, username=user,
            key=str(d / "user_ed25519"), key_with_passphrase=str(d / "user_pass_ed25519"),
            passphrase=PASSPHRASE, known_hosts=str(known_hosts),
            host_public_key=f"{host_type} {host_b64}", log=str(log), dir=str(d), proc=proc,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def remote_root(tmp_path, sshd_server):
    """A fresh parent directory for the session's remote work directories (loopback: it is local);
    after the test no ``mixq-*`` directory may remain in it."""
    root = tmp_path / "devkit-remote"
    root.mkdir()
    yield str(root)
    assert sshd_server.proc.poll() is None, "sshd died during the test"
    leftovers = sorted(p.name for p in root.iterdir() if p.name.startswith("mixq-"))
    assert leftovers == [], f"remote work directories left behind: {leftovers}"


@pytest.fixture
def make_session(sshd_server, remote_root):
    """``make_session(**overrides)`` -> an unopened DevkitSession to the test server: key auth,
    the test known_hosts, the per-test remote root and fast retries."""
    from core.devkit.transport import DevkitSession, RetryPolicy

    def make(**overrides):
        kwargs = dict(
            username=sshd_server.username, key_filename=sshd_server.key,
            known_hosts=sshd_server.known_hosts, remote_root=remote_root, timeout=10.0,
            retry=RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2),
        )
        kwargs.update(overrides)
        host = kwargs.pop("host", sshd_server.host)
        port = kwargs.pop("port", sshd_server.port)
        return DevkitSession(host, port, **kwargs)

    return make
