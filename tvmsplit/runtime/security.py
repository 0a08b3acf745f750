"""CurveZMQ encryption and authentication for pipeline links (``--secure KEYS_DIR``).

Off by default: plain TCP is fine on loopback (``tcp://127.0.0.1``), where only local users can
connect. Between machines, give every process the same kind of keys directory and ``--secure``:
every link is then encrypted (CurveZMQ), every binding socket refuses peers whose public key is
not authorized, and every connecting socket checks that its server holds the expected key.

Key scheme (one flat directory, ZeroMQ's standard certificate files)
    ``KEYS_DIR/<name>.key``         public key  (``zmq.auth.create_certificates`` format)
    ``KEYS_DIR/<name>.key_secret``  secret key, mode 0600 (a looser mode is refused)

    Two identities: ``client`` (the process running :class:`~tvmsplit.runtime.pipeline.Pipeline`)
    and ``worker`` (shared by all stage workers). Create both with :func:`generate_keys`
    (``tvmsplit keys KEYS_DIR``).

    * A process's own keypair is ``<its name>.key_secret`` (``client`` or ``worker``).
    * **Roles.** A public key file ``client*.key`` (``client.key``, ``client-lab.key``, ...) is a
      *client* identity; every other ``*.key`` is a *worker* identity. Each binding socket admits
      only the role that should talk to it (ZAP domains, checked on every handshake):

      ========================================  ===========  ==============================
      socket                                    ZAP domain   admits
      ========================================  ===========  ==============================
      a worker's control socket                 ``clients``  client keys only
      a worker's bound ``out`` (to the client)  ``clients``  client keys only
      an entry stage's data socket              ``peers``    client and worker keys
      any other stage's data socket             ``workers``  worker keys only
      the client's result socket                ``workers``  worker keys only
      ========================================  ===========  ==============================

      So a worker's keypair (which every worker machine holds) cannot send ``shutdown`` or
      ``deploy`` to any worker, nor read another stage's results; a client key cannot feed a
      stage in the middle of the pipeline. To add a peer, copy its ``.key`` in; to revoke one,
      delete it and restart. Secret files (``*.key_secret``) never count as authorizations.
    * **Per-stage keys** (optional: ``tvmsplit keys DIR --names client,stage0,stage1,...``). When
      ``stage<i>.key`` exists, stage i's worker uses ``stage<i>.key_secret`` instead of
      ``worker``'s, and the sockets it binds or connects to know it by that key alone: a stage's
      data socket then admits exactly its senders in the plan (the client's keys for entry
      stages, each sending stage's key), and the client's result socket exactly the stages that
      reply. A stage machine then holds only its own secret, and a stolen one can feed only the
      stages that one sends to. Stages without their own key share ``worker``.
    * A connecting socket uses the server's public key from ``KEYS_DIR/<server name>.key``:
      ``worker.key`` for stage data and control sockets, ``client.key`` for the last stage's
      link to a launching Pipeline's result socket (the worker's ``--next-key client``).

    Distributing: a worker machine needs ``worker.key_secret``, ``worker.key`` and
    ``client.key``; the client machine needs ``client.key_secret``, ``client.key`` and
    ``worker.key``. Never copy a ``.key_secret`` to a machine that does not act as that name.

Sockets: the binding side of each link is a CURVE server (its own secret key) and runs a
``zmq.auth.thread.ThreadAuthenticator`` on its context; the connecting side is a CURVE client (its
own keypair plus the server's public key). A peer without CURVE, with a key that is not
authorized, or that expects another server key fails the handshake: ZeroMQ drops the connection
before any message is delivered.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.utils import z85

from ..errors import TvmsplitError

CLIENT = "client"
WORKER = "worker"
# ZAP domains: who may connect to a binding socket (see the table above)
CLIENTS, WORKERS, PEERS = "clients", "workers", "peers"
DOMAINS = (CLIENTS, WORKERS, PEERS)


def stage_identity(keys_dir: str | os.PathLike, stage: int) -> str:
    """The key name stage ``stage``'s worker goes by: ``stage<i>`` when ``stage<i>.key`` is in
    ``keys_dir``, else the shared ``worker``."""
    return f"stage{stage}" if (Path(keys_dir) / f"stage{stage}.key").exists() else WORKER
DEFAULT_NAMES = (CLIENT, WORKER)
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


class SecurityError(TvmsplitError):
    """Keys are missing, corrupt, too readable, or CURVE is not available."""


def _make_keys_hint(keys_dir: Path | str) -> str:
    return f"create them with `tvmsplit keys {keys_dir}`"


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise SecurityError("this libzmq has no CURVE support (zmq.has('curve') is False); "
                            "install pyzmq wheels, which bundle libsodium, or build libzmq with it")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith((".key", ".")):
        raise SecurityError(f"key name {name!r} is not valid: use letters, digits, '_', '-', "
                            "'.' (not first), like 'client' or 'worker'")
    return name


def _valid_key(key: bytes | None) -> bool:
    if not isinstance(key, bytes) or len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except Exception:  # noqa: BLE001 - any decoding failure means "not a key"
        return False


def generate_keys(directory: str | os.PathLike, names: Iterable[str] = DEFAULT_NAMES, *,
                  overwrite: bool = False) -> dict[str, tuple[Path, Path]]:
    """Create a CURVE keypair per name in ``directory`` (made with mode 0700 if absent):
    ``<name>.key`` (public, 0644) and ``<name>.key_secret`` (secret, 0600). Refuses to replace
    existing key files unless ``overwrite``. Returns ``{name: (public_path, secret_path)}``."""
    _require_curve()
    names = [_check_name(n) for n in names]
    if not names or len(set(names)) != len(names):
        raise SecurityError(f"key names must be distinct and at least one, got {names}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise SecurityError(f"{directory} exists and is not a directory")
    if not overwrite:
        existing = [str(p) for n in names
                    for p in (directory / f"{n}.key", directory / f"{n}.key_secret") if p.exists()]
        if existing:
            raise SecurityError(f"key file(s) already exist: {', '.join(existing)}; refusing to "
                                "overwrite them (peers holding the old public keys would be "
                                "locked out). Use another directory, or --force / overwrite=True")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # written in a private (0700) directory, then moved in: a secret is never readable by others
        tmp = Path(tempfile.mkdtemp(prefix=".keys-", dir=directory))
    except OSError as exc:
        raise SecurityError(f"cannot create keys in {directory}: {exc}") from None
    out = {}
    try:
        for name in names:
            pub, sec = (Path(p) for p in zmq.auth.create_certificates(tmp, name))
            os.chmod(sec, 0o600)
            os.chmod(pub, 0o644)
            out[name] = (directory / pub.name, directory / sec.name)
        for name, (pub, sec) in out.items():
            os.replace(tmp / sec.name, sec)
            os.replace(tmp / pub.name, pub)
    except OSError as exc:
        raise SecurityError(f"cannot write keys to {directory}: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _load_public(path: Path, keys_dir: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        if not path.exists():
            raise SecurityError(f"public key file {path} is missing; copy it from the machine "
                                f"that holds it, or {_make_keys_hint(keys_dir)}") from None
        raise SecurityError(f"public key file {path} is not a ZeroMQ certificate ({exc}); "
                            f"replace it, or {_make_keys_hint(keys_dir)} --force") from None
    if not _valid_key(public):
        raise SecurityError(f"public key file {path} is corrupt (public-key is not a 40-character "
                            f"Z85 CURVE key); replace it, or {_make_keys_hint(keys_dir)} --force")
    return public


def _load_secret(path: Path, keys_dir: Path) -> tuple[bytes, bytes]:
    if not path.is_file():
        raise SecurityError(f"secret key file {path} is missing; {_make_keys_hint(keys_dir)} "
                            "(or copy it there from where the keys were made)")
    if os.name == "posix":
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise SecurityError(f"secret key file {path} is readable by others (mode "
                                f"{mode:04o}); run `chmod 600 {path}`")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise SecurityError(f"secret key file {path} is not a ZeroMQ certificate ({exc}); "
                            f"{_make_keys_hint(keys_dir)} --force") from None
    if not (_valid_key(secret) and _valid_key(public)) or zmq.curve_public(secret) != public:
        raise SecurityError(f"secret key file {path} is corrupt (its secret-key is not a valid "
                            "Z85 CURVE key or does not match its public-key); "
                            f"{_make_keys_hint(keys_dir)} --force")
    return public, secret


@dataclass(frozen=True)
class SecureConfig:
    """The keys of one process: ``SecureConfig(keys_dir, name)`` loads ``<name>.key_secret`` as
    this side's keypair and every ``*.key`` in ``keys_dir`` as the authorized public keys. Raises
    :class:`SecurityError` naming the file when something is missing or corrupt."""

    keys_dir: Path
    name: str = WORKER
    public_key: bytes = field(init=False)
    secret_key: bytes = field(init=False, repr=False)
    authorized: frozenset[bytes] = field(init=False, repr=False)   # every public key
    client_keys: frozenset[bytes] = field(init=False, repr=False)  # client*.key
    worker_keys: frozenset[bytes] = field(init=False, repr=False)  # the other *.key

    def __post_init__(self):
        _require_curve()
        keys_dir = Path(self.keys_dir)
        object.__setattr__(self, "keys_dir", keys_dir)
        _check_name(self.name)
        if not keys_dir.is_dir():
            raise SecurityError(f"keys directory {keys_dir} does not exist; "
                                f"{_make_keys_hint(keys_dir)}")
        public, secret = _load_secret(keys_dir / f"{self.name}.key_secret", keys_dir)
        files = sorted(keys_dir.glob("*.key"))
        clients = frozenset(_load_public(p, keys_dir) for p in files
                            if p.name.startswith(CLIENT))
        workers = frozenset(_load_public(p, keys_dir) for p in files
                            if not p.name.startswith(CLIENT))
        authorized = clients | workers
        if not authorized:
            raise SecurityError(f"keys directory {keys_dir} has no public key (*.key) files, so "
                                f"no peer could connect; {_make_keys_hint(keys_dir)}")
        object.__setattr__(self, "public_key", public)
        object.__setattr__(self, "secret_key", secret)
        object.__setattr__(self, "authorized", authorized)
        object.__setattr__(self, "client_keys", clients)
        object.__setattr__(self, "worker_keys", workers)

    @classmethod
    def of(cls, secure: "SecureConfig | str | os.PathLike | None", name: str
           ) -> "SecureConfig | None":
        """``secure`` as the config of identity ``name`` (a path is loaded; None stays None)."""
        if secure is None or isinstance(secure, SecureConfig) and secure.name == name:
            return secure
        return cls(secure.keys_dir if isinstance(secure, SecureConfig) else secure, name)

    def peer_key(self, peer: str | os.PathLike) -> bytes:
        """The public key of the server ``peer``: a name (``KEYS_DIR/<peer>.key``) or a path to
        a ``.key`` file."""
        path = Path(peer)
        if isinstance(peer, str) and _NAME.fullmatch(peer) and not peer.endswith(".key"):
            path = self.keys_dir / f"{peer}.key"
        return _load_public(path, self.keys_dir)

    def is_authorized(self, public_key: bytes, domain: str = PEERS) -> bool:
        """Would a server socket of ``domain`` admit ``public_key``?"""
        return public_key in self.admitted(domain)

    def stage_key(self, stage: int) -> bytes:
        """The public key stage ``stage``'s worker serves and connects with."""
        return self.peer_key(stage_identity(self.keys_dir, stage))

    def senders_keys(self, stages: Iterable[int], client: bool) -> frozenset[bytes]:
        """The public keys of these stages (and of the clients, when ``client``)."""
        keys = {self.stage_key(i) for i in stages}
        return frozenset(keys | (set(self.client_keys) if client else set()))

    def admitted(self, domain: str) -> frozenset[bytes]:
        if domain not in DOMAINS:
            raise SecurityError(f"unknown ZAP domain {domain!r}; one of {', '.join(DOMAINS)}")
        return {CLIENTS: self.client_keys, WORKERS: self.worker_keys,
                PEERS: self.authorized}[domain]

    def server(self, sock: zmq.Socket, domain: str = PEERS) -> zmq.Socket:
        """Make ``sock`` a CURVE server admitting the role ``domain`` (one of ``DOMAINS`` or one
        given to :meth:`authenticator`; call before bind)."""
        sock.zap_domain = domain.encode()
        sock.curve_secretkey = self.secret_key
        sock.curve_publickey = self.public_key
        sock.curve_server = True
        return sock

    def client(self, sock: zmq.Socket, server_key: bytes) -> zmq.Socket:
        """Make ``sock`` a CURVE client of the server holding ``server_key`` (call before
        connect)."""
        sock.curve_secretkey = self.secret_key
        sock.curve_publickey = self.public_key
        sock.curve_serverkey = server_key
        return sock

    def authenticator(self, ctx: zmq.Context,
                      extra: dict[str, frozenset[bytes]] | None = None) -> Any:
        """Start a ZAP handler on ``ctx`` that admits, per domain, only that role's public keys
        (``extra``: more domains with their keys, e.g. a stage's exact senders). Start it before
        binding a server socket; ``stop()`` it before ``ctx.term()``."""
        extra = dict(extra or {})
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(ctx)
        auth.start()
        try:
            for domain in DOMAINS:
                auth.configure_curve_callback(domain, _Admit(self.admitted(domain)))
            for domain, keys in extra.items():
                auth.configure_curve_callback(domain, _Admit(keys))
        except BaseException:
            auth.stop()
            raise
        return auth


def admit(auth: Any, domain: str, keys: frozenset[bytes]) -> None:
    """Let ``auth`` (from :meth:`SecureConfig.authenticator`) admit exactly ``keys`` on
    ``domain`` from now on (e.g. a new plan's replying stages)."""
    auth.configure_curve_callback(domain, _Admit(keys))


class _Admit:
    """A ZAP credentials provider: the public keys (z85) one domain admits."""

    def __init__(self, keys: frozenset[bytes]):
        self.keys = frozenset(z85.encode(k) if len(k) == 32 else k for k in keys)

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys
