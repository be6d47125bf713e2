"""A real OpenSSH server on 127.0.0.1 for the devkit transport tests.

The "devkit" is this machine over loopback: one ``/usr/sbin/sshd -D -e`` per test session, on a
free port, with generated ed25519 host and user keys (one user key with a passphrase), its own
sshd_config, authorized_keys and known_hosts in a temp dir. ``scripts/ensure_sshd.sh`` installs
openssh-server when it is missing (CI runs it before pytest); if sshd is still missing the tests
fail with a message saying so.
"""
from __future__ import annotations

import pytest

from core.devkit.testing import LoopbackDevkit, SshdUnavailable, loopback_sshd

PASSPHRASE = "Kx7-passphrase-Zq9"  # of the encrypted test user key; the leak test looks for it

SshServer = LoopbackDevkit   # host, port, username, key, key_with_passphrase, passphrase, known_hosts, ...


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory) -> SshServer:
    try:
        with loopback_sshd(tmp_path_factory.mktemp("sshd"), passphrase=PASSPHRASE) as server:
            yield server
    except SshdUnavailable as e:
        pytest.fail(f"{e} (as root, scripts/ensure_sshd.sh installs openssh-server and openssh-client; "
                    "`make test` runs it)")


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
