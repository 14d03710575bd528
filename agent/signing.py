"""Ed25519 keys and signatures of remote configs (docs/platform.md "Remote configuration").

Keys are PEM files as ``openssl genpkey -algorithm ed25519`` writes them: the private key
PKCS#8, the public key SubjectPublicKeyInfo. ``cryptography`` (about 9 MiB of RSS) is
imported only to sign, to make keys and to verify: a gateway reads its public key without it
and verifies a push in a short-lived child process (:meth:`PublicKey.verifies_apart`), so
the agent's own process never loads it.
Errors name the file and what is wrong, never a key's bytes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MAX_KEY_FILE_BYTES = 16 * 1024
_BAD_SIGNATURE = 3  # the child's exit status for "does not verify"
VERIFY_TIMEOUT = 60.0  # a Pi starts Python and loads cryptography in a second or two


@dataclass(frozen=True)
class PublicKey:
    """A gateway's trust anchor: verifies config signatures. Holds the raw 32-byte key;
    ``cryptography`` is imported at the first verification, i.e. the first push."""

    raw: bytes
    path: Path

    def verifies(self, signature: bytes, data: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True

    async def verifies_apart(self, signature: bytes, data: bytes) -> bool:
        """:meth:`verifies` in a short-lived child process (``python -m agent.signing``), so
        that the agent never holds ``cryptography`` (about 9 MiB of RSS) for a push it gets
        once in a while. OSError when the child cannot run or fails."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.signing", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(VERIFY_TIMEOUT):
                _, err = await proc.communicate(self.raw + signature + data)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise OSError(f"signature check took longer than {VERIFY_TIMEOUT:g} s") from None
        if proc.returncode not in (0, _BAD_SIGNATURE):
            raise OSError(f"signature check exited with {proc.returncode}: "
                          f"{err.decode(errors='replace').strip()[-200:]}")
        return proc.returncode == 0


@dataclass(frozen=True)
class PrivateKey:
    """The platform's signing key."""

    key: Ed25519PrivateKey
    path: Path

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)

    def public(self) -> PublicKey:
        from cryptography.hazmat.primitives import serialization

        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw)
        return PublicKey(raw, self.path)


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


# DER of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID 1.3.101.112 },
# BIT STRING { 0 unused bits, the 32-byte key } }; every Ed25519 public key starts so.
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_PEM_PUBLIC = re.compile(
    rb"-----BEGIN PUBLIC KEY-----\s+([A-Za-z0-9+/=\s]+?)-----END PUBLIC KEY-----")


def load_public_key(path: Path, what: str = "public_key_file") -> PublicKey:
    """An Ed25519 public key from a PEM file (read without ``cryptography``, so a gateway
    loads it only when a push comes); ConfigError names the file and the problem."""
    match = _PEM_PUBLIC.search(_read(path, what))
    try:
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True) if match else b""
    except (binascii.Error, ValueError):
        der = b""
    if not der:
        raise ConfigError(f"{what} {path}: not a PEM public key (make one with "
                          "`ssc-agent fleet keygen`)")
    if len(der) != len(_ED25519_SPKI_PREFIX) + 32 or not der.startswith(_ED25519_SPKI_PREFIX):
        raise ConfigError(f"{what} {path}: not an Ed25519 key")
    return PublicKey(der[len(_ED25519_SPKI_PREFIX):], path)


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


def _verify_stdin() -> int:
    """``python -m agent.signing``: stdin holds a raw Ed25519 public key (32 bytes), a
    signature (64) and the signed bytes; exit 0 when it verifies, 3 when it does not."""
    data = sys.stdin.buffer.read()
    key = PublicKey(data[:32], Path("-"))
    return 0 if len(data) >= 96 and key.verifies(data[32:96], data[96:]) else _BAD_SIGNATURE


if __name__ == "__main__":
    sys.exit(_verify_stdin())
