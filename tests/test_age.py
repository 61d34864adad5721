"""Our streaming age writer produces plain age: pyrage and the stock age CLI decrypt it."""

from __future__ import annotations

import io
import os
import subprocess

import pyrage
import pytest

from jobs.engine.age import CHUNK, AgeWriter, parse_recipient
from jobs.engine.agekeys import new_identity
from tests.conftest import require_binary

# Run once, in the default pass (tests/teststack.py): the age format and the stock age CLI.
pytestmark = pytest.mark.stack_independent


def encrypt(data: bytes, recipients: list[str], pieces: int = 7) -> bytes:
    out = io.BytesIO()
    writer = AgeWriter(out, recipients)
    step = max(1, len(data) // pieces)
    for offset in range(0, len(data), step):
        writer.write(data[offset : offset + step])
    writer.close()
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 12345])
def test_pyrage_decrypts_every_chunk_boundary(size):
    identity, recipient = new_identity()
    data = os.urandom(size)
    blob = encrypt(data, [recipient])
    assert pyrage.decrypt(blob, [pyrage.x25519.Identity.from_str(identity)]) == data


def test_two_recipients_can_each_decrypt():
    (id1, r1), (id2, r2) = new_identity(), new_identity()
    blob = encrypt(b"shared secret data" * 1000, [r1, r2])
    for identity in (id1, id2):
        assert pyrage.decrypt(blob, [pyrage.x25519.Identity.from_str(identity)]) == b"shared secret data" * 1000


def test_tampering_is_detected():
    identity, recipient = new_identity()
    blob = bytearray(encrypt(os.urandom(3 * CHUNK), [recipient]))
    blob[-100] ^= 1
    with pytest.raises(pyrage.DecryptError):
        pyrage.decrypt(bytes(blob), [pyrage.x25519.Identity.from_str(identity)])
    truncated = encrypt(os.urandom(3 * CHUNK), [recipient])[: -CHUNK // 2]
    with pytest.raises(pyrage.DecryptError):
        pyrage.decrypt(truncated, [pyrage.x25519.Identity.from_str(identity)])


def test_the_stock_age_cli_decrypts(tmp_path):
    require_binary("age")
    identity, recipient = new_identity()
    data = os.urandom(5 * CHUNK + 77)
    (tmp_path / "x.age").write_bytes(encrypt(data, [recipient]))
    (tmp_path / "key.txt").write_text(identity + "\n")
    out = subprocess.run(
        ["age", "-d", "-i", str(tmp_path / "key.txt"), str(tmp_path / "x.age")], capture_output=True, check=True
    )
    assert out.stdout == data


def test_recipient_parsing_checks_the_checksum():
    _, recipient = new_identity()
    assert len(parse_recipient(recipient)) == 32
    broken = recipient[:-1] + ("q" if recipient[-1] != "q" else "p")
    for bad in (broken, "age1", "npub1xyz", recipient.replace("age1", "agf1")):
        with pytest.raises(ValueError):
            parse_recipient(bad)
