"""The original clients' text encoding of ``msg_data`` (WIRE.md §1): AES-256-ECB, then base64.

Servers never look inside ``msg_data``; clients that talk to the original
clients must encode text the way they do:

1. the UTF-8 plaintext is zero-padded to whole 16-byte blocks, with one extra
   block when ``len % 16 == 0`` or ``len % 16 > 12`` (so that 4 bytes are free
   at the end);
2. the last 4 bytes of the padded buffer hold the plaintext length, big-endian;
3. each block is encrypted with AES-256 in ECB mode under a 32-byte key that
   every client of a deployment shares (``aesKey`` in the original's configs);
4. the ciphertext is base64-encoded (standard alphabet, with ``=`` padding).

:func:`decode` checks everything it can (base64, block size, the length field,
the padding layout and the zero padding) and raises :class:`ValueError` for
anything that is not the output of :func:`encode` under the same key: a wrong
key is detected, except with negligible probability.

Confidentiality is what ECB with a fixed shared key gives: little (equal blocks
encrypt equally; anyone with a client has the key). This exists for
compatibility, not for secrecy.
"""

from __future__ import annotations

import base64
import binascii
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_BYTES = 32
BLOCK_BYTES = 16
LENGTH_BYTES = 4
#: The key the original's sample configurations ship with (``aesKey``).
DEFAULT_AES_KEY = b"12345678901234567890123456789012"

_LENGTH = struct.Struct(">I")


def padded_length(n: int) -> int:
    """Bytes of the padded buffer for an ``n``-byte plaintext (a multiple of 16, ≥ n + 4)."""
    if n < 0:
        raise ValueError("negative length")
    blocks = (n + BLOCK_BYTES - 1) // BLOCK_BYTES
    remainder = n % BLOCK_BYTES
    if remainder == 0 or remainder > BLOCK_BYTES - LENGTH_BYTES:
        blocks += 1
    return blocks * BLOCK_BYTES


def pad(plain: bytes) -> bytes:
    """The buffer that gets encrypted: plaintext, zeros, then the length (big-endian u32)."""
    size = padded_length(len(plain))
    if len(plain) > 0xFFFFFFFF:
        raise ValueError("plaintext longer than 4 GiB")
    return plain + bytes(size - len(plain) - LENGTH_BYTES) + _LENGTH.pack(len(plain))


def unpad(buffer: bytes) -> bytes:
    """Inverse of :func:`pad`; ValueError unless ``buffer`` is exactly what :func:`pad` makes."""
    if len(buffer) < BLOCK_BYTES or len(buffer) % BLOCK_BYTES:
        raise ValueError(f"padded text of {len(buffer)} bytes is not whole 16-byte blocks")
    (n,) = _LENGTH.unpack_from(buffer, len(buffer) - LENGTH_BYTES)
    if n > len(buffer) - LENGTH_BYTES or padded_length(n) != len(buffer):
        raise ValueError(
            f"length field {n} does not fit {len(buffer)} padded bytes (wrong key or not encoded)"
        )
    if any(buffer[n : len(buffer) - LENGTH_BYTES]):
        raise ValueError("padding is not zeros (wrong key or not encoded)")
    return buffer[:n]


class TextCipher:
    """Encodes and decodes ``msg_data`` under one 32-byte key. Immutable; thread-safe."""

    def __init__(self, key: bytes | str = DEFAULT_AES_KEY) -> None:
        raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        if len(raw) != KEY_BYTES:
            raise ValueError(f"the AES key must be {KEY_BYTES} bytes, not {len(raw)}")
        self.key = raw
        self._algorithm = algorithms.AES(raw)

    def encrypt_blocks(self, data: bytes) -> bytes:
        """Raw AES-256-ECB of whole blocks (no padding, no base64)."""
        if len(data) % BLOCK_BYTES:
            raise ValueError("data is not whole 16-byte blocks")
        enc = Cipher(self._algorithm, modes.ECB()).encryptor()
        return enc.update(data) + enc.finalize()

    def decrypt_blocks(self, data: bytes) -> bytes:
        """Inverse of :meth:`encrypt_blocks`."""
        if len(data) % BLOCK_BYTES:
            raise ValueError("data is not whole 16-byte blocks")
        dec = Cipher(self._algorithm, modes.ECB()).decryptor()
        return dec.update(data) + dec.finalize()

    def encode(self, plain: bytes | str) -> bytes:
        """Encode a plaintext (``str`` is UTF-8 encoded first) into ASCII base64 bytes."""
        raw = plain.encode("utf-8") if isinstance(plain, str) else bytes(plain)
        return base64.b64encode(self.encrypt_blocks(pad(raw)))

    def decode(self, data: bytes | str) -> bytes:
        """The plaintext bytes of an encoded ``msg_data``; ValueError if it is not one."""
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"not base64: {exc}") from None
        if not raw or len(raw) % BLOCK_BYTES:
            raise ValueError(f"ciphertext of {len(raw)} bytes is not whole 16-byte blocks")
        return unpad(self.decrypt_blocks(raw))

    def decode_text(self, data: bytes | str) -> str:
        """:meth:`decode`, then UTF-8; ValueError if either fails."""
        plain = self.decode(data)
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"decrypted text is not UTF-8: {exc}") from None


def encode(plain: bytes | str, key: bytes | str = DEFAULT_AES_KEY) -> bytes:
    """``TextCipher(key).encode(plain)``."""
    return TextCipher(key).encode(plain)


def decode(data: bytes | str, key: bytes | str = DEFAULT_AES_KEY) -> bytes:
    """``TextCipher(key).decode(data)``: the plaintext bytes, or ValueError."""
    return TextCipher(key).decode(data)


__all__ = [
    "DEFAULT_AES_KEY",
    "KEY_BYTES",
    "TextCipher",
    "decode",
    "encode",
    "pad",
    "padded_length",
    "unpad",
]
