"""SSH/SFTP transport to a devkit, generic over files and commands.

::

    with DevkitSession("192.168.1.20", username="sima", key_filename="~/.ssh/id_ed25519") as dk:
        work = dk.create_workdir()                      # /tmp/mixq-<uuid hex>, mode 0700
        dk.upload("model.lm", f"{work}/model.lm")       # sha256-verified, retried
        dk.run(f"python3 -m core.devkit run model.lm in.npz out.npz", cwd=work, timeout=600)
        dk.download(f"{work}/out.npz", "out.npz")       # sha256-verified, retried
    # every work directory the session created is removed here, also after errors

Security: the devkit's host key must be in known_hosts (``~/.ssh/known_hosts`` and
``/etc/ssh/ssh_known_hosts`` by default) unless ``accept_unknown_host=True``; a key accepted that
way is pinned for the session's reconnects. Passwords and key passphrases are held in an object
whose repr hides them and are never logged, printed, put into exception messages or written.

paramiko is imported inside functions only, so importing this module stays light.
"""
from __future__ import annotations

import base64
import dataclasses
import errno
import hashlib
import logging
import os
import posixpath
import re
import shlex
import socket
import time
import uuid
from collections.abc import Callable
from typing import NamedTuple

from core.errors import (
    DevkitAuthenticationError,
    DevkitCommandError,
    DevkitConnectionError,
    DevkitDiskFullError,
    DevkitError,
    DevkitHostKeyError,
    DevkitTimeoutError,
    DevkitTransferError,
)
from core.formats.atomic import sha256_file

log = logging.getLogger("mixq.devkit")

STDERR_TAIL_CHARS = 2000
WORKDIR_PREFIX = "mixq-"
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
_WORKDIR_RE = re.compile(r"^mixq-[0-9a-f]{32}$")
_PID_MARKER = "__mixq_pid__="
_CHUNK = 1 << 16
_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DISK_FULL_WORDS = ("no space left", "enospc", "disk full", "quota exceeded", "disk quota")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How transfers retry after a dropped connection or a checksum mismatch: ``attempts`` tries
    in all, waiting ``base_delay * 2**k`` seconds (at most ``max_delay``) before try ``k + 2``."""

    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0

    def __post_init__(self):
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy delays must be >= 0")

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait after ``failed_attempts`` (>= 1) failed tries."""
        return min(self.max_delay, self.base_delay * (2 ** (failed_attempts - 1)))


class CommandResult(NamedTuple):
    """What a remote command gave back; unpacks as ``(exit_code, stdout, stderr)``."""

    exit_code: int
    stdout: str
    stderr: str


class _Secret:
    """Holds a password or passphrase; its str/repr never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None):
        self._value = value or None

    def reveal(self) -> str | None:
        return self._value

    def __bool__(self) -> bool:
        return self._value is not None

    def __repr__(self) -> str:
        return "<hidden>" if self._value is not None else "<none>"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("secrets are not picklable")


class _Retryable(Exception):
    """Internal: one transfer attempt failed in a way worth retrying."""


def _fingerprint(key) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return f"{key.get_name()} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"


def _looks_disk_full(exc: BaseException) -> bool:
    if getattr(exc, "errno", None) in _DISK_FULL_ERRNOS:
        return True
    text = str(exc).lower()
    return any(word in text for word in _DISK_FULL_WORDS)


class _HashingWriter:
    """File-like sink for SFTP downloads: writes through and hashes on the way."""

    def __init__(self, f):
        self._f = f
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        try:
            return self._f.write(data)
        except OSError as e:
            raise _LocalWriteError(e) from None


class _LocalWriteError(Exception):
    """Internal: writing the local copy of a download failed (local disk, not the devkit's)."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


class DevkitSession:
    """One SSH connection to a devkit, used as a context manager.

    Parameters: ``host``, ``port``, ``username``; ``password`` (``''`` or ``None``: none) and/or
    ``key_filename`` (a private key; ``passphrase`` decrypts it); ``timeout`` (seconds, for the TCP
    connect, the SSH handshake and authentication, and SFTP inactivity); ``known_hosts`` (a file;
    default ``~/.ssh/known_hosts`` plus ``/etc/ssh/ssh_known_hosts``); ``accept_unknown_host``
    (accept and pin a host key not in known_hosts; a *mismatched* known key is always refused);
    ``retry`` (:class:`RetryPolicy` for transfers); ``remote_root`` (parent of the work
    directories, default ``/tmp``); ``compress`` (SSH compression); ``allow_agent`` /
    ``look_for_keys`` (use an ssh-agent / ``~/.ssh/id_*``; default: only when neither a password
    nor a key file is given).
    """

    def __init__(
        self,
        host: str,
        port: int = 22,
        *,
        username: str,
        password: str | None = None,
        key_filename: str | os.PathLike | None = None,
        passphrase: str | None = None,
        timeout: float = 30.0,
        known_hosts: str | os.PathLike | None = None,
        accept_unknown_host: bool = False,
        retry: RetryPolicy | None = None,
        remote_root: str = "/tmp",
        compress: bool = False,
        allow_agent: bool | None = None,
        look_for_keys: bool | None = None,
    ):
        if not host:
            raise ValueError("DevkitSession: host must not be empty")
        if not username:
            raise ValueError("DevkitSession: username must not be empty")
        self.host = str(host)
        self.port = int(port)
        self.username = str(username)
        self._password = _Secret(password)
        self._passphrase = _Secret(passphrase)
        self.key_filename = os.path.expanduser(os.fspath(key_filename)) if key_filename else None
        self.timeout = float(timeout)
        self.known_hosts = os.path.expanduser(os.fspath(known_hosts)) if known_hosts else None
        self.accept_unknown_host = bool(accept_unknown_host)
        self.retry = retry or RetryPolicy()
        self.remote_root = remote_root
        self.compress = bool(compress)
        default_discovery = not self._password and self.key_filename is None
        self.allow_agent = default_discovery if allow_agent is None else bool(allow_agent)
        self.look_for_keys = default_discovery if look_for_keys is None else bool(look_for_keys)
        self._client = None
        self._sftp = None
        self._pinned_key = None  # (hostkey name, PKey) seen on the first connect
        self._workdirs: list[str] = []

    # ------------------------------------------------------------------ naming and secrets
    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def workdirs(self) -> tuple[str, ...]:
        """The remote work directories this session created and will remove."""
        return tuple(self._workdirs)

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed"
        return f"DevkitSession({self.username}@{self.address}, {state})"

    def _scrub(self, text: str) -> str:
        for secret in (self._password, self._passphrase):
            value = secret.reveal()
            if value:
                text = text.replace(value, "***")
        return text

    def _err(self, cls, message: str, **kwargs):
        return cls(self._scrub(message), **kwargs)

    # ------------------------------------------------------------------ connection
    @property
    def connected(self) -> bool:
        transport = self._client.get_transport() if self._client is not None else None
        return bool(transport is not None and transport.is_active() and transport.is_authenticated())

    def __enter__(self) -> DevkitSession:
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def open(self) -> DevkitSession:
        """Connect (no-op when connected). Raises DevkitConnectionError, DevkitHostKeyError or
        DevkitAuthenticationError."""
        if not self.connected:
            self._connect()
        return self

    def _host_key_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def _load_private_key(self):
        import paramiko

        path = self.key_filename
        if not os.path.isfile(path):
            raise self._err(DevkitAuthenticationError, f"SSH key file {path!r} not found (devkit {self.address})")
        try:
            passphrase = self._passphrase.reveal()
            return paramiko.PKey.from_path(path, passphrase.encode() if passphrase is not None else None)
        except paramiko.PasswordRequiredException:
            raise self._err(
                DevkitAuthenticationError,
                f"SSH key file {path!r} is encrypted: give its passphrase (devkit {self.address})",
            ) from None
        except (paramiko.SSHException, ValueError, TypeError) as e:
            if not self._passphrase and ("password" in str(e).lower() or "encrypted" in str(e).lower()):
                raise self._err(
                    DevkitAuthenticationError,
                    f"SSH key file {path!r} is encrypted: give its passphrase (devkit {self.address})",
                ) from None
            hint = "wrong passphrase or unsupported key" if self._passphrase else "unsupported or corrupt key"
            raise self._err(
                DevkitAuthenticationError,
                f"cannot load SSH key file {path!r} ({hint}: {type(e).__name__}) for devkit {self.address}",
            ) from None
        except OSError as e:
            raise self._err(
                DevkitAuthenticationError,
                f"cannot read SSH key file {path!r}: {e.strerror or e} (devkit {self.address})",
            ) from None

    def _make_host_key_policy(self, known_files: list[str]):
        import paramiko

        session = self

        class _Policy(paramiko.MissingHostKeyPolicy):
            def missing_host_key(self, client, hostname, key):
                fp = _fingerprint(key)
                if not session.accept_unknown_host:
                    files = ", ".join(known_files) or "none"
                    raise DevkitHostKeyError(
                        f"host key of devkit {session.address} ({fp}) is not in known_hosts ({files}); "
                        f"check the fingerprint and add it (ssh-keyscan -p {session.port} {session.host}) "
                        "or pass accept_unknown_host=True")
                log.warning("accepting unknown host key %s for devkit %s (accept_unknown_host=True)",
                            fp, session.address)
                client.get_host_keys().add(hostname, key.get_name(), key)

        return _Policy()

    def _connect(self) -> None:
        import paramiko

        self._close_client()
        pkey = self._load_private_key() if self.key_filename else None

        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except TimeoutError:
            raise self._err(DevkitConnectionError,
                            f"cannot connect to devkit {self.address}: timed out after {self.timeout:g} s") from None
        except OSError as e:
            reason = e.strerror or str(e) or type(e).__name__
            raise self._err(DevkitConnectionError, f"cannot connect to devkit {self.address}: {reason}") from None

        client = paramiko.SSHClient()
        known_files = []
        candidates = (
            [self.known_hosts] if self.known_hosts else [os.path.expanduser("~/.ssh/known_hosts"), SYSTEM_KNOWN_HOSTS]
        )
        for path in candidates:
            if os.path.isfile(path):
                try:
                    client.load_system_host_keys(path)
                    known_files.append(path)
                except OSError as e:
                    log.warning("cannot read known_hosts file %s: %s", path, e)
        if self._pinned_key is not None:
            name, key = self._pinned_key
            client.get_host_keys().add(name, key.get_name(), key)
        client.set_missing_host_key_policy(self._make_host_key_policy(known_files or candidates))

        try:
            client.connect(
                self.host, self.port, username=self.username,
                password=self._password.reveal(), pkey=pkey, passphrase=None,
                sock=sock, timeout=self.timeout, banner_timeout=self.timeout,
                auth_timeout=self.timeout, channel_timeout=self.timeout,
                allow_agent=self.allow_agent, look_for_keys=self.look_for_keys,
                compress=self.compress,
            )
        except DevkitError:
            client.close()
            raise
        except paramiko.BadHostKeyException as e:
            client.close()
            raise self._err(
                DevkitHostKeyError,
                f"host key of devkit {self.address} ({_fingerprint(e.key)}) does not match the known key "
                f"({_fingerprint(e.expected_key)}): possible man-in-the-middle, or the devkit was "
                "reinstalled; fix known_hosts after checking") from None
        except paramiko.AuthenticationException as e:
            client.close()
            raise self._err(DevkitAuthenticationError,
                            f"authentication as {self.username!r} on devkit {self.address} failed "
                            f"({type(e).__name__}: {e})") from None
        except paramiko.SSHException as e:
            client.close()
            if "authentication" in str(e).lower():
                raise self._err(DevkitAuthenticationError,
                                f"authentication as {self.username!r} on devkit {self.address} failed: {e}") from None
            raise self._err(DevkitConnectionError, f"SSH handshake with devkit {self.address} failed: {e}") from None
        except (EOFError, OSError) as e:
            client.close()
            reason = str(e) or type(e).__name__
            raise self._err(DevkitConnectionError,
                            f"connection to devkit {self.address} lost during the SSH handshake: {reason}") from None
        except BaseException:
            client.close()
            raise

        transport = client.get_transport()
        transport.set_keepalive(max(5, int(self.timeout)))
        if self._pinned_key is None:
            self._pinned_key = (self._host_key_name(), transport.get_remote_server_key())
        self._client = client
        log.debug("connected to devkit %s as %s", self.address, self.username)

    def _ensure_connected(self) -> None:
        if not self.connected:
            if self._client is not None:
                log.info("connection to devkit %s lost; reconnecting", self.address)
            self._connect()

    def _sftp_client(self):
        self._ensure_connected()
        if self._sftp is None or self._sftp.get_channel() is None or self._sftp.get_channel().closed:
            try:
                self._sftp = self._client.open_sftp()
            except Exception as e:  # noqa: BLE001 - classified below
                if not self.connected:
                    raise _Retryable(f"connection lost while opening SFTP: {str(e) or type(e).__name__}") from None
                raise self._err(DevkitTransferError, f"cannot open SFTP on devkit {self.address}: {e}") from None
            self._sftp.get_channel().settimeout(self.timeout)
        return self._sftp

    def _close_client(self) -> None:
        for thing in (self._sftp, self._client):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - best effort
                    pass
        self._sftp = None
        self._client = None

    def close(self) -> None:
        """Remove every work directory this session created (reconnecting once if the connection
        is gone), then disconnect. Never raises; failures to clean up are logged as warnings."""
        try:
            if self._workdirs:
                self._cleanup_workdirs()
        finally:
            self._close_client()

    def _cleanup_workdirs(self) -> None:
        reconnects_left = 1  # the connection may be gone (or dead without paramiko knowing yet)
        for path in list(self._workdirs):
            while True:
                try:
                    if not self.connected:
                        if not reconnects_left:
                            raise DevkitConnectionError(f"connection to devkit {self.address} lost")
                        reconnects_left -= 1
                        self._connect()
                    self.remove_workdir(path)
                    break
                except DevkitConnectionError as e:
                    if reconnects_left:
                        self._close_client()
                        continue
                    log.warning("cannot remove %s on devkit %s: %s", path, self.address, self._scrub(str(e)))
                    return
                except Exception as e:  # noqa: BLE001 - cleanup must not mask the caller's error
                    log.warning("cannot remove %s on devkit %s: %s", path, self.address, self._scrub(str(e)))
                    break

    # ------------------------------------------------------------------ work directories
    def create_workdir(self) -> str:
        """Create a fresh ``<remote_root>/mixq-<uuid hex>`` (mode 0700) and return its absolute
        path; it is removed when the session closes."""
        sftp = self._call_sftp(self._sftp_client)
        root = self.remote_root
        try:
            if not root.startswith("/"):
                root = sftp.normalize(root)
            path = posixpath.join(root, WORKDIR_PREFIX + uuid.uuid4().hex)
            sftp.mkdir(path, 0o700)
        except (OSError, EOFError) as e:
            if _looks_disk_full(e):
                raise self._err(
                    DevkitDiskFullError, f"no space left on devkit {self.address} to create a work directory in {root}"
                ) from None
            raise self._err(
                DevkitError, f"cannot create a work directory in {root!r} on devkit {self.address}: {e}"
            ) from None
        self._workdirs.append(path)
        log.debug("created %s on devkit %s", path, self.address)
        return path

    def remove_workdir(self, path: str) -> None:
        """Remove a work directory this session created (``rm -rf``)."""
        if path not in self._workdirs or not _WORKDIR_RE.match(posixpath.basename(path)):
            raise ValueError(f"{path!r} is not a work directory of this session")
        self.run(f"rm -rf -- {shlex.quote(path)}", timeout=max(self.timeout, 60.0))
        self._workdirs.remove(path)
        log.debug("removed %s on devkit %s", path, self.address)

    # ------------------------------------------------------------------ commands
    def run(self, command: str, *, timeout: float | None = None, cwd: str | None = None,
            check: bool = True, env: dict[str, str] | None = None) -> CommandResult:
        """Run ``command`` through the remote login shell (in ``cwd`` if given) and wait at most
        ``timeout`` seconds (None: no limit). Returns ``(exit_code, stdout, stderr)``.

        Raises DevkitCommandError on a non-zero exit when ``check`` (exit code 127: command not
        found), DevkitTimeoutError after killing the command's whole process group when the time
        limit passes, DevkitConnectionError when the connection drops while it runs."""
        self._ensure_connected()
        script = command
        if env:
            for k in env:
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                    raise ValueError(f"invalid environment variable name {k!r}")
            script = "".join(f"export {k}={shlex.quote(str(v))}; " for k, v in env.items()) + script
        if cwd is not None:
            script = f"cd {shlex.quote(cwd)} && {script}"
        # sshd starts the login shell in a new session, so $$ is the command's process group id.
        wrapped = f"echo {_PID_MARKER}$$ >&2; {script}"
        transport = self._client.get_transport()
        try:
            chan = transport.open_session(timeout=self.timeout)
            chan.exec_command(wrapped)
            chan.shutdown_write()  # the command's stdin is empty
        except Exception as e:  # noqa: BLE001
            raise self._err(DevkitConnectionError,
                            f"cannot start a command on devkit {self.address}: {str(e) or type(e).__name__}") from None

        out, err = bytearray(), bytearray()
        pgid, marker_seen = None, False
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                got = False
                while chan.recv_ready():
                    out += chan.recv(_CHUNK)
                    got = True
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(_CHUNK)
                    got = True
                if not marker_seen and b"\n" in err:
                    marker_seen = True
                    first, _, rest = bytes(err).partition(b"\n")
                    if first.startswith(_PID_MARKER.encode()):
                        try:
                            pgid = int(first[len(_PID_MARKER):])
                        except ValueError:
                            pass
                        err = bytearray(rest)
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if not transport.is_active():
                    raise self._err(DevkitConnectionError,
                                    f"connection to devkit {self.address} lost while running: {command[:200]}")
                if deadline is not None and time.monotonic() > deadline:
                    chan.close()
                    self._kill_group(pgid)
                    tail = err.decode("utf-8", "replace")[-STDERR_TAIL_CHARS:]
                    raise self._err(
                        DevkitTimeoutError,
                        f"command on devkit {self.address} did not finish within {timeout:g} s "
                        f"and was killed: {command[:200]}" + (f"\n--- stderr (tail) ---\n{tail}" if tail else ""),
                    )
                if not got:
                    time.sleep(0.01)
            code = chan.recv_exit_status()
            if code == -1 and not transport.is_active():
                raise self._err(DevkitConnectionError,
                                f"connection to devkit {self.address} lost while running: {command[:200]}")
        finally:
            chan.close()

        stdout = out.decode("utf-8", "replace")
        stderr = err.decode("utf-8", "replace")
        if code != 0 and check:
            tail = stderr[-STDERR_TAIL_CHARS:]
            if code == 127:
                what = "command not found on the devkit (is the runtime installed?)"
            elif code == -1:
                what = "command was killed (no exit status)"
            elif code > 128:
                what = f"command exited with status {code} (signal {code - 128}?)"
            else:
                what = f"command exited with status {code}"
            raise self._err(
                DevkitCommandError,
                f"{what} on devkit {self.address}: {command[:200]}\n"
                f"--- stderr (last {STDERR_TAIL_CHARS} chars) ---\n{tail}",
                exit_code=code,
                stderr_tail=self._scrub(tail),
                command=command,
            )
        return CommandResult(code, stdout, stderr)

    def _kill_group(self, pgid: int | None) -> None:
        if pgid is None:
            log.warning("timed-out command on devkit %s reported no process id; it may linger", self.address)
            return
        script = (f"p={pgid}; kill -s TERM -- -$p 2>/dev/null || kill -s TERM $p 2>/dev/null; i=0; "
                  "while kill -s 0 -- -$p 2>/dev/null && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done; "
                  "kill -s KILL -- -$p 2>/dev/null; exit 0")
        try:
            self._ensure_connected()
            self.run(script, timeout=max(10.0, self.timeout), check=False)
        except Exception as e:  # noqa: BLE001 - the timeout error is what the caller must see
            log.warning(
                "cannot kill timed-out process group %s on devkit %s: %s", pgid, self.address, self._scrub(str(e))
            )

    # ------------------------------------------------------------------ transfers
    def _call_sftp(self, fn, *args):
        """Run an SFTP step, turning a dropped connection into a retryable failure."""
        try:
            return fn(*args)
        except _Retryable:
            raise self._err(DevkitConnectionError, f"connection to devkit {self.address} lost") from None

    def remote_sha256(self, remote: str, size_hint: int = 0) -> str:
        """sha256 of a remote file, computed on the devkit (``sha256sum``, else ``python3``)."""
        q = shlex.quote(remote)
        limit = self.timeout + size_hint / 20e6
        res = self.run(f"sha256sum {q}", timeout=limit, check=False)
        if res.exit_code == 127:
            res = self.run("python3 -c 'import hashlib,sys; h=hashlib.sha256(); f=open(sys.argv[1],\"rb\"); "
                           "[h.update(b) for b in iter(lambda: f.read(1<<20), b\"\")]; print(h.hexdigest())' " + q,
                           timeout=limit, check=False)
        m = re.match(r"\s*([0-9a-fA-F]{64})\b", res.stdout)
        if res.exit_code != 0 or not m:
            raise _Retryable(f"cannot checksum {remote}: exit {res.exit_code}: {res.stderr.strip()[-300:]}")
        return m.group(1).lower()

    def _retrying(self, what: str, attempt_fn) -> None:
        last = None
        for attempt in range(1, self.retry.attempts + 1):
            try:
                attempt_fn()
                if attempt > 1:
                    log.info("%s succeeded on attempt %d", what, attempt)
                return
            except _Retryable as e:
                last = str(e)
            except (DevkitConnectionError, DevkitTimeoutError) as e:
                last = str(e)
            if attempt < self.retry.attempts:
                delay = self.retry.delay(attempt)
                log.warning("%s failed (attempt %d of %d): %s; retrying in %.2g s",
                            what, attempt, self.retry.attempts, self._scrub(last), delay)
                time.sleep(delay)
        raise self._err(DevkitTransferError, f"{what} failed after {self.retry.attempts} attempts: {last}")

    def _resolve(self, remote: str) -> str:
        remote = os.fspath(remote)
        if not remote.startswith("/"):
            if not self._workdirs:
                raise ValueError(f"relative remote path {remote!r} needs a work directory (create_workdir())")
            remote = posixpath.join(self._workdirs[-1], remote)
        return remote

    def _classify_io_error(self, e: BaseException, what: str, remote_dir: str | None, needed: int) -> Exception:
        """A failed SFTP step: the error to raise, or a _Retryable."""
        if self._connection_lost(e):
            self._close_client()  # the next attempt reconnects
            return _Retryable(
                f"connection to devkit {self.address} dropped during {what}: {str(e) or type(e).__name__}"
            )
        code = getattr(e, "errno", None)
        if code not in _DISK_FULL_ERRNOS and code in (
            errno.ENOENT,
            errno.EACCES,
            errno.EPERM,
            errno.EISDIR,
            errno.ENOTDIR,
        ):
            return self._err(DevkitTransferError, f"{what} on devkit {self.address} failed: {e}")
        # OpenSSH's sftp-server reports ENOSPC as a bare "Failure": ask df when the message is vague.
        if _looks_disk_full(e) or (remote_dir and self._remote_disk_full(remote_dir, needed)):
            return self._err(DevkitDiskFullError, f"no space left on devkit {self.address} for {what} ({needed} bytes)")
        return _Retryable(f"{what} failed: {str(e) or type(e).__name__}")

    def _connection_lost(self, e: BaseException) -> bool:
        import paramiko

        if isinstance(e, (EOFError, socket.timeout, paramiko.SSHException)) or not self.connected:
            return True
        # paramiko closes the channels a moment before it marks the transport inactive
        channel = self._sftp.get_channel() if self._sftp is not None else None
        return channel is not None and channel.closed

    def _remote_disk_full(self, remote_dir: str, needed: int) -> bool:
        """True when ``remote_dir`` has less than ``needed`` bytes free (df), i.e. the disk is full."""
        try:
            res = self.run(f"df -Pk {shlex.quote(remote_dir)}", timeout=self.timeout, check=False)
            fields = res.stdout.strip().splitlines()[-1].split()
            return res.exit_code == 0 and int(fields[3]) * 1024 < max(needed, 1)
        except Exception:  # noqa: BLE001 - only a hint
            return False

    def _put_file(self, sftp, local: str, remote: str, callback) -> None:
        sftp.put(local, remote, callback=callback, confirm=True)

    def _get_file(self, sftp, remote: str, fileobj, callback) -> None:
        sftp.getfo(remote, fileobj, callback=callback)

    def upload(self, local: str | os.PathLike, remote: str,
               callback: Callable[[int, int], None] | None = None) -> str:
        """Copy ``local`` to ``remote`` (absolute, or relative to the newest work directory).
        Written to a temporary name, verified by sha256 on the devkit, then renamed; retried per
        :attr:`retry` after a dropped connection or a mismatch. ``callback(done, total)`` reports
        progress. Returns the remote path. Raises DevkitTransferError / DevkitDiskFullError."""
        local = os.fspath(local)
        remote = self._resolve(remote)
        if not os.path.isfile(local):
            raise DevkitTransferError(f"cannot upload {local!r}: no such file")
        size = os.path.getsize(local)
        digest = sha256_file(local)
        part = f"{remote}.part-{uuid.uuid4().hex[:8]}"
        what = f"upload of {local} to {self.address}:{remote}"

        def attempt():
            sftp = self._sftp_client()
            try:
                self._put_file(sftp, local, part, callback)
            except Exception as e:  # noqa: BLE001 - paramiko raises OSError, EOFError and SSHException
                if isinstance(e, DevkitError):
                    raise
                failure = self._classify_io_error(e, what, posixpath.dirname(remote), size)
                self._remove_quietly(part)
                raise failure from None
            got = self.remote_sha256(part, size)
            if got != digest:
                self._remove_quietly(part)
                raise _Retryable(f"checksum mismatch after {what}: sha256 {got} on the devkit, {digest} here")
            try:
                sftp = self._sftp_client()
                sftp.posix_rename(part, remote)
            except Exception as e:  # noqa: BLE001
                if self._connection_lost(e):
                    raise self._classify_io_error(e, what, None, 0) from None
                # servers without the posix-rename extension: mv on the devkit
                res = self.run(f"mv -f {shlex.quote(part)} {shlex.quote(remote)}", timeout=self.timeout, check=False)
                if res.exit_code != 0:
                    self._remove_quietly(part)
                    raise self._err(
                        DevkitTransferError,
                        f"{what}: cannot rename {part} to {remote}: {e}; {res.stderr.strip()[-300:]}",
                    ) from None

        self._retrying(what, attempt)
        log.debug("uploaded %s (%d bytes, sha256 %s) to %s:%s", local, size, digest, self.address, remote)
        return remote

    def download(self, remote: str, local: str | os.PathLike,
                 callback: Callable[[int, int], None] | None = None) -> str:
        """Copy ``remote`` (absolute, or relative to the newest work directory) to ``local``,
        atomically, verified against a sha256 computed on the devkit; retried per :attr:`retry`.
        Returns the local path. Raises DevkitTransferError."""
        from core.formats.atomic import atomic_write

        local = os.fspath(local)
        remote = self._resolve(remote)
        what = f"download of {self.address}:{remote} to {local}"

        def attempt():
            sftp = self._sftp_client()
            try:
                size = sftp.stat(remote).st_size or 0
            except Exception as e:  # noqa: BLE001
                raise self._classify_io_error(e, what, None, 0) from None
            expected = self.remote_sha256(remote, size)

            def write(f):
                sink = _HashingWriter(f)
                try:
                    self._get_file(sftp, remote, sink, callback)
                except DevkitError:
                    raise
                except _LocalWriteError as e:
                    raise e.error from None  # atomic_write turns it into DevkitTransferError naming the file
                except Exception as e:  # noqa: BLE001 - must not reach atomic_write as OSError
                    raise _WrappedFailure(self._classify_io_error(e, what, None, 0)) from None
                if sink.sha256.hexdigest() != expected:
                    raise _WrappedFailure(
                        _Retryable(
                            f"checksum mismatch after {what}: sha256 {sink.sha256.hexdigest()} here, "
                            f"{expected} on the devkit"
                        )
                    )

            try:
                atomic_write(local, write, error=DevkitTransferError, what="downloaded file")
            except _WrappedFailure as w:
                raise w.failure from None

        self._retrying(what, attempt)
        log.debug("downloaded %s:%s to %s", self.address, remote, local)
        return local

    def _remove_quietly(self, remote: str) -> None:
        if not self.connected:
            return
        try:
            self._sftp_client().remove(remote)
        except Exception:  # noqa: BLE001 - best effort; the work directory goes anyway
            pass


class _WrappedFailure(Exception):
    """Carries a failure through atomic_write (which turns OSError into its own error type)."""

    def __init__(self, failure: Exception):
        super().__init__(str(failure))
        self.failure = failure
