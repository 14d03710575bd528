"""Ed25519 keys and signatures of remote configs (docs/platform.md "Remote configuration").

Keys are PEM files as ``openssl genpkey -algorithm ed25519`` writes them: the private key
PKCS#8, the public key SubjectPublicKeyInfo. ``cryptography`` is imported only when a key is
loaded, so a gateway without ``[remote_config]`` never loads it (its RSS stays as it was).
Errors name the file and what is wrong, never a key's bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

MAX_KEY_FILE_BYTES = 16 * 1024


@dataclass(frozen=True)
class PublicKey:
    """A gateway's trust anchor: verifies config signatures."""

    key: Ed25519PublicKey
    path: Path

    def verifies(self, signature: bytes, data: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self.key.verify(signature, data)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class PrivateKey:
    """The platform's signing key."""

    key: Ed25519PrivateKey
    path: Path

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)

    def public(self) -> PublicKey:
        return PublicKey(self.key.public_key(), self.path)


def _read(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_KEY_FILE_BYTES:
            raise ConfigError(f"{what} {path}: larger than {MAX_KEY_FILE_BYTES} bytes: not a key")
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory, not a key file") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror}") from None


def load_public_key(path: Path, what: str = "public_key_file") -> PublicKey:
    """An Ed25519 public key from a PEM file; ConfigError names the file and the problem."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = _read(path, what)
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ConfigError(f"{what} {path}: not a PEM public key (make one with "
                          "`ssc-agent fleet keygen`)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{what} {path}: not an Ed25519 key")
    return PublicKey(key, path)


def load_private_key(path: Path, what: str = "--key") -> PrivateKey:
    """An Ed25519 private key from an unencrypted PEM file; the error never shows its bytes."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = _read(path, what)
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{what} {path}: an encrypted key; give an unencrypted one") from None
    except (ValueError, UnsupportedAlgorithm):
        # cryptography's messages may quote what it read: say only what the file is not
        raise ConfigError(f"{what} {path}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{what} {path}: not an Ed25519 key")
    return PrivateKey(key, path)


def write_keypair(prefix: Path) -> tuple[Path, Path]:
    """A new key pair: ``PREFIX.key`` (private, mode 0600, created only if absent) and
    ``PREFIX.pub`` (public, for the gateways). Returns both paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path = prefix.with_name(prefix.name + ".key")
    public_path = prefix.with_name(prefix.name + ".pub")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"--out: {path} exists already; keygen never overwrites a key")
    try:
        # O_EXCL: never through a file someone else created; 0600 from the first byte
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigError(f"--out: cannot create {private_path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
        f.flush()
        os.fsync(f.fileno())
    try:
        public_path.write_bytes(public_pem)
    except OSError as exc:
        raise ConfigError(f"--out: cannot write {public_path}: {exc.strerror}") from None
    return private_path, public_path
