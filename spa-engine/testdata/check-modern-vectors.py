#!/usr/bin/env python3
"""Recomputes every vector of modern-vectors.txt from its inputs, following only
docs/modern-format.md, with Python's standard library and pyca/cryptography: a second,
independent implementation of the format.

    python3 spa-engine/testdata/check-modern-vectors.py [spa-engine/testdata/modern-vectors.txt]

Prints one line per vector and exits non-zero at the first difference.
"""

import base64
import hashlib
import hmac
import ipaddress
import struct
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


# --- HPKE (RFC 9180), base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305 ---
KEM_SUITE = b"KEM" + struct.pack(">H", 0x0020)
HPKE_SUITE = b"HPKE" + struct.pack(">HHH", 0x0020, 0x0001, 0x0003)


def extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt or b"\0" * 32, ikm, hashlib.sha256).digest()


def expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out, i = out + t, i + 1
    return out[:length]


def labeled_extract(suite, salt, label, ikm):
    return extract(salt, b"HPKE-v1" + suite + label + ikm)


def labeled_expand(suite, prk, label, info, length):
    return expand(prk, struct.pack(">H", length) + b"HPKE-v1" + suite + label + info, length)


def hpke_setup(sk_e: bytes, pk_r: bytes, info: bytes):
    esk = X25519PrivateKey.from_private_bytes(sk_e)
    enc = esk.public_key().public_bytes(*RAW)
    dh = esk.exchange(X25519PublicKey.from_public_bytes(pk_r))
    assert dh != bytes(32)
    eae_prk = labeled_extract(KEM_SUITE, b"", b"eae_prk", dh)
    shared = labeled_expand(KEM_SUITE, eae_prk, b"shared_secret", enc + pk_r, 32)
    psk_id_hash = labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(HPKE_SUITE, b"", b"info_hash", info)
    ks_context = b"\x00" + psk_id_hash + info_hash
    secret = labeled_extract(HPKE_SUITE, shared, b"secret", b"")
    key = labeled_expand(HPKE_SUITE, secret, b"key", ks_context, 32)
    nonce = labeled_expand(HPKE_SUITE, secret, b"base_nonce", ks_context, 12)
    return enc, shared, key, nonce


# --- the body (section 3.5) ---
def put_ip(text: str) -> bytes:
    ip = ipaddress.ip_address(text)
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return (b"\x04" if ip.version == 4 else b"\x06") + ip.packed


def body(v: dict) -> bytes:
    flags = 0
    out = b""
    if v["allow"] == "source":
        out += b"\x00"
    else:
        out += put_ip(v["allow"])
    if v["source_port"] != "-":
        flags |= 0x01
        out += struct.pack(">H", int(v["source_port"]))
    ports = v["ports"].split(",")
    out += bytes([len(ports)])
    for p in ports:
        proto, port = p.split("/")
        out += bytes([{"tcp": 6, "udp": 17}[proto]]) + struct.pack(">H", int(port))
    nat = v["nat"].split()
    if nat and nat[0] == "forward":
        flags |= 0x02
        try:
            out += put_ip(nat[1])
        except ValueError:
            out += b"\x02" + bytes([len(nat[1])]) + nat[1].encode()
        out += struct.pack(">H", int(nat[2]))
    elif nat and nat[0] == "local":
        flags |= 0x04
        out += struct.pack(">H", int(nat[1]))
    if v["username"] != "-":
        flags |= 0x08
        out += bytes([len(v["username"])]) + v["username"].encode()
    if v["client_timeout"] != "-":
        flags |= 0x10
        out += struct.pack(">I", int(v["client_timeout"]))
    out = bytes.fromhex(v["nonce"]) + bytes([flags]) + out
    return out + bytes(-len(out) % 32)


def check(v: dict) -> None:
    user = Ed25519PrivateKey.from_private_bytes(unb64(v["user_secret"].split(":", 1)[1]))
    server = X25519PrivateKey.from_private_bytes(unb64(v["server_secret"].split(":", 1)[1]))
    u = user.public_key().public_bytes(*RAW)
    s = server.public_key().public_bytes(*RAW)
    got = {
        "user_public": "ed25519:" + b64(u),
        "server_public": "x25519:" + b64(s),
        "mac_key": hashlib.sha256(b"spa modern v1 mac key" + s).hexdigest(),
    }
    enc, shared, key, nonce = hpke_setup(bytes.fromhex(v["ephemeral_secret"]), s, b"spa modern v1")
    got.update(enc=enc.hex(), shared_secret=shared.hex(), aead_key=key.hex(), aead_nonce=nonce.hex())
    header = b"\x01" + struct.pack(">Q", int(v["timestamp"]))
    padded = body(v)
    transcript = b"spa modern v1 signature" + s + header + enc + u + padded
    signature = user.sign(transcript)
    plaintext = u + signature + padded
    ciphertext = ChaCha20Poly1305(key).encrypt(nonce, plaintext, header)
    packet = header + enc + ciphertext
    packet += hmac.new(bytes.fromhex(got["mac_key"]), packet, hashlib.sha256).digest()[:16]
    wire = "SPA1." + b64(packet)
    got.update(
        header=header.hex(),
        body=padded.hex(),
        transcript=transcript.hex(),
        signature=signature.hex(),
        plaintext=plaintext.hex(),
        packet=packet.hex(),
        replay_key=hashlib.sha256(packet).hexdigest(),
        wire_len=str(len(wire)),
        wire=wire,
    )
    for k, value in got.items():
        if v[k] != value:
            sys.exit(f"{v['name']}: {k} differs\n  file: {v[k]}\n  here: {value}")
    # And the server's side: the MAC, then the AEAD, with the server's secret key.
    dh = server.exchange(X25519PublicKey.from_public_bytes(enc))
    assert dh == X25519PrivateKey.from_private_bytes(bytes.fromhex(v["ephemeral_secret"])).exchange(
        X25519PublicKey.from_public_bytes(s))
    assert ChaCha20Poly1305(key).decrypt(nonce, packet[41:-16], packet[:9]) == plaintext


def vectors(text: str) -> list:
    out = []
    for line in text.splitlines():
        if line.startswith("[vector"):
            out.append({"name": line.strip("[]")})
        elif line and not line.startswith("#"):
            k, val = line.split("=", 1)
            out[-1][k] = val
    return out


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("modern-vectors.txt"))
    n = 0
    for v in vectors(path.read_text()):
        check(v)
        print(f"{v['name']}: ok ({v['wire_len']} bytes on the wire)")
        n += 1
    if n == 0:
        sys.exit("no vectors")


if __name__ == "__main__":
    main()
