#!/usr/bin/python3
"""An independent check of the test vectors of docs/PROTOCOL.md (protocol v2).

    /usr/bin/python3 scripts/vectors.py [docs/PROTOCOL.md]

Reads the ```test-vectors``` block of the document and, for every vector,
recomputes each derived field from the vector's inputs and the document's
description alone (no code of the Rust implementation is used), then opens
the knock bytes, parses the plaintext back into the request, and verifies the
signature of a public-key vector. Prints one line per vector and the summary
`vectors: N passed, M failed`; exits 1 if any vector fails (naming, for each
failing vector, the first field that differs), 2 if the document or the
environment is unusable.

Primitives, each with a self-test against its published test vector before
any vector is checked:

* HMAC-SHA256, HKDF-Expand and SHA-256: Debian's python3-cryptography
  (RFC 4231 / RFC 5869 test case 1);
* HChaCha20: written here from draft-irtf-cfrg-xchacha (section 2.2; its
  test vector of section 2.2.1);
* XChaCha20-Poly1305: HChaCha20, then the raw ChaCha20 stream (block 0 gives
  the Poly1305 key, blocks 1.. the key stream) and Poly1305 of
  python3-cryptography, assembled as RFC 8439 section 2.8 says
  (the draft's AEAD example of appendix A.3.1);
* X25519 and Ed25519: python3-cryptography (RFC 7748 section 6.1, RFC 8032
  section 7.1 TEST 1).

It must run with Debian's python3-cryptography (`/usr/bin/python3`; the
package is in scripts/install-deps.sh), and refuses any other copy of the
module, so that the check does not silently depend on what pip installed.
"""

import base64
import ipaddress
import os
import struct
import sys

try:
    import cryptography
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, hmac, poly1305, serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
except ImportError as err:  # pragma: no cover - environment problem
    print(f"vectors.py: cannot import cryptography ({err}); install python3-cryptography "
          "and run with /usr/bin/python3", file=sys.stderr)
    sys.exit(2)

DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages/"

# ---- the protocol's constants (docs/PROTOCOL.md) ---------------------------

SLOT_MS = 30_000
HINT_LEN = 8
NONCE_LEN = 24
TAG_LEN = 16
MAX_PORTS = 16
REQUEST_LEN = 15 + 3 * MAX_PORTS + 16  # 79
AUTH_LEN = 64
MAX_PADDING = 63
MIN_KNOCK_LEN = HINT_LEN + NONCE_LEN + REQUEST_LEN + AUTH_LEN + TAG_LEN  # 191
MAX_KNOCK_LEN = MIN_KNOCK_LEN + MAX_PADDING  # 254
VERSION = 2
FLAG_BOUND, FLAG_BOUND_V6, FLAG_SIGNED = 1, 2, 4
PROTOCOLS = {"tcp": 6, "udp": 17}

LABEL_IDENTITY = b"knock/v2 identity"
LABEL_ED25519 = b"knock/v2 identity ed25519"
LABEL_X25519 = b"knock/v2 identity x25519"
LABEL_SHARED = b"knock/v2 shared-key"
LABEL_PUBLIC = b"knock/v2 public-key"
LABEL_HINT_KEY = b"knock/v2 hint"
LABEL_AEAD_KEY = b"knock/v2 aead"
LABEL_REPLAY_ID = b"knock/v2 replay id"
LABEL_SLOT = b"knock/v2 slot"
LABEL_SIGNATURE = b"knock/v2 signature"
LABEL_LINE = b"knock/v2 public line"
LINE_PREFIX = "knock-id1:"

SHARED_INPUTS = ["name", "client_secret", "server_id", "ports", "duration_s",
                 "bound_addr", "timestamp_ms", "nonce", "padding"]
SHARED_OUTPUTS = ["pair_prk", "hint_key", "aead_key", "replay_id", "hint",
                  "plaintext", "length", "knock"]
PUBLIC_INPUTS = ["name", "identity_seed", "server_secret", "server_id", "ports",
                 "duration_s", "bound_addr", "timestamp_ms", "nonce", "padding"]
PUBLIC_OUTPUTS = ["client_ed25519_pk", "client_x25519_pk", "public_line",
                  "server_public_key", "dh", "pair_prk", "hint_key", "aead_key",
                  "replay_id", "hint", "signed_message", "signature", "plaintext",
                  "length", "knock"]

# ---- HMAC, HKDF, SHA-256 (python3-cryptography) ---------------------------


def hmac_sha256(key, message):
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(message)
    return h.finalize()


def hkdf_extract(salt, ikm):
    """RFC 5869 section 2.2: PRK = HMAC-Hash(salt, IKM)."""
    return hmac_sha256(salt, ikm)


def hkdf_expand(prk, info, length=32):
    """RFC 5869 section 2.3."""
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(prk)


def sha256(data):
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


# ---- HChaCha20 (draft-irtf-cfrg-xchacha, section 2.2), by hand -------------

MASK32 = 0xFFFFFFFF
CHACHA_CONSTANTS = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"


def _rotl32(v, c):
    return ((v << c) & MASK32) | (v >> (32 - c))


def _quarter_round(s, a, b, c, d):
    """RFC 8439 section 2.1."""
    s[a] = (s[a] + s[b]) & MASK32
    s[d] = _rotl32(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & MASK32
    s[b] = _rotl32(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & MASK32
    s[d] = _rotl32(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & MASK32
    s[b] = _rotl32(s[b] ^ s[c], 7)


def hchacha20(key, nonce16):
    """The ChaCha20 state from the constants, the 256-bit key and the 128-bit
    nonce (in place of the block counter and nonce), 20 rounds (10 column and
    diagonal round pairs), no final addition of the input state; the subkey
    is state words 0..3 and 12..15, little-endian."""
    if len(key) != 32 or len(nonce16) != 16:
        raise ValueError("HChaCha20 takes a 32-byte key and a 16-byte nonce")
    state = list(CHACHA_CONSTANTS) + list(struct.unpack("<8L", key)) + list(
        struct.unpack("<4L", nonce16))
    for _ in range(10):
        _quarter_round(state, 0, 4, 8, 12)
        _quarter_round(state, 1, 5, 9, 13)
        _quarter_round(state, 2, 6, 10, 14)
        _quarter_round(state, 3, 7, 11, 15)
        _quarter_round(state, 0, 5, 10, 15)
        _quarter_round(state, 1, 6, 11, 12)
        _quarter_round(state, 2, 7, 8, 13)
        _quarter_round(state, 3, 4, 9, 14)
    return struct.pack("<4L", *state[0:4]) + struct.pack("<4L", *state[12:16])


# ---- XChaCha20-Poly1305 (draft section 2.3, RFC 8439 section 2.8) ----------


def _chacha20_stream(key, counter, nonce12, data):
    """ChaCha20 (RFC 8439) from `counter`: python3-cryptography takes the
    16-byte block counter (LE) || nonce as its "nonce"."""
    full_nonce = struct.pack("<L", counter) + nonce12
    encryptor = Cipher(algorithms.ChaCha20(key, full_nonce), mode=None).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def _pad16(data):
    return b"\x00" * (-len(data) % 16)


def _poly1305_tag(otk, aad, ciphertext):
    mac_data = (aad + _pad16(aad) + ciphertext + _pad16(ciphertext)
                + struct.pack("<Q", len(aad)) + struct.pack("<Q", len(ciphertext)))
    return poly1305.Poly1305.generate_tag(otk, mac_data)


def _xchacha_subkey(key, nonce24):
    subkey = hchacha20(key, nonce24[:16])
    nonce12 = b"\x00" * 4 + nonce24[16:]
    return subkey, nonce12


def xchacha20poly1305_seal(key, nonce24, aad, plaintext):
    """Returns ciphertext || tag."""
    subkey, nonce12 = _xchacha_subkey(key, nonce24)
    otk = _chacha20_stream(subkey, 0, nonce12, b"\x00" * 32)
    ciphertext = _chacha20_stream(subkey, 1, nonce12, plaintext)
    return ciphertext + _poly1305_tag(otk, aad, ciphertext)


def xchacha20poly1305_open(key, nonce24, aad, sealed):
    """The plaintext, or None if the tag does not verify."""
    if len(sealed) < TAG_LEN:
        return None
    ciphertext, tag = sealed[:-TAG_LEN], sealed[-TAG_LEN:]
    subkey, nonce12 = _xchacha_subkey(key, nonce24)
    otk = _chacha20_stream(subkey, 0, nonce12, b"\x00" * 32)
    try:
        poly1305.Poly1305.verify_tag(otk, aad + _pad16(aad) + ciphertext + _pad16(ciphertext)
                                     + struct.pack("<Q", len(aad))
                                     + struct.pack("<Q", len(ciphertext)), tag)
    except InvalidSignature:
        return None
    return _chacha20_stream(subkey, 1, nonce12, ciphertext)


# ---- X25519, Ed25519 (python3-cryptography) -------------------------------

RAW = serialization.Encoding.Raw
RAW_PUBLIC = serialization.PublicFormat.Raw


def x25519_public(secret):
    return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes(RAW, RAW_PUBLIC)


def x25519(secret, public):
    return X25519PrivateKey.from_private_bytes(secret).exchange(
        X25519PublicKey.from_public_bytes(public))


def ed25519_public(seed):
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(RAW, RAW_PUBLIC)


def ed25519_sign(seed, message):
    return Ed25519PrivateKey.from_private_bytes(seed).sign(message)


def ed25519_verifies(public, message, signature):
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except InvalidSignature:
        return False
    return True


# ---- self-tests against the primitives' published vectors ------------------


def self_test():
    """Raises AssertionError naming the primitive that is wrong."""
    h = bytes.fromhex
    # HChaCha20: draft-irtf-cfrg-xchacha, section 2.2.1.
    assert hchacha20(bytes(range(32)), h("000000090000004a0000000031415927")) == h(
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"), "HChaCha20"
    # XChaCha20-Poly1305: the same draft, appendix A.3.1.
    key = bytes(range(0x80, 0xA0))
    nonce = h("404142434445464748494a4b4c4d4e4f5051525354555657")
    aad = h("50515253c0c1c2c3c4c5c6c7")
    plaintext = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one "
                 b"tip for the future, sunscreen would be it.")
    expected = h(
        "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
        "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
        "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
        "21f9664c97637da9768812f615c68b13b52e"
        "c0875924c1c7987947deafd8780acf49")
    assert xchacha20poly1305_seal(key, nonce, aad, plaintext) == expected, "XChaCha20-Poly1305"
    assert xchacha20poly1305_open(key, nonce, aad, expected) == plaintext, "XChaCha20-Poly1305 open"
    tampered = bytearray(expected)
    tampered[0] ^= 1
    assert xchacha20poly1305_open(key, nonce, aad, bytes(tampered)) is None, "Poly1305 verify"
    # HKDF-SHA256: RFC 5869, A.1 (test case 1).
    prk = hkdf_extract(h("000102030405060708090a0b0c"), b"\x0b" * 22)
    assert prk == h("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"), "HKDF-Extract"
    assert hkdf_expand(prk, h("f0f1f2f3f4f5f6f7f8f9"), 42) == h(
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    ), "HKDF-Expand"
    # X25519: RFC 7748, section 6.1.
    alice = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    assert x25519_public(alice) == h(
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"), "X25519 public"
    assert x25519(alice, x25519_public(bob)) == h(
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"), "X25519"
    # Ed25519: RFC 8032, section 7.1, TEST 1.
    seed = h("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    public = h("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    signature = h("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
                  "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
    assert ed25519_public(seed) == public, "Ed25519 public key"
    assert ed25519_sign(seed, b"") == signature, "Ed25519 sign"
    assert ed25519_verifies(public, b"", signature), "Ed25519 verify"
    assert not ed25519_verifies(public, b"x", signature), "Ed25519 verify refuses"


# ---- the protocol, from docs/PROTOCOL.md -----------------------------------


def parse_ports(text):
    ports = []
    for item in text.split(","):
        item = item.strip()
        proto, _, number = item.rpartition("/")
        proto = proto or "tcp"
        if proto not in PROTOCOLS:
            raise ValueError(f"unknown transport in port {item!r}")
        port = int(number)
        if not 1 <= port <= 65535:
            raise ValueError(f"port out of range: {item!r}")
        ports.append((PROTOCOLS[proto], port))
    return ports


def parse_bound_addr(text):
    return None if text == "none" else ipaddress.ip_address(text)


def request_block(ports, duration_s, bound_addr, timestamp_ms, signed):
    """The 79-byte request block of the plaintext table."""
    flags = 0
    if bound_addr is not None:
        flags |= FLAG_BOUND
        if bound_addr.version == 6:
            flags |= FLAG_BOUND_V6
    if signed:
        flags |= FLAG_SIGNED
    if not 1 <= len(ports) <= MAX_PORTS:
        raise ValueError(f"{len(ports)} ports: a knock carries 1 to {MAX_PORTS}")
    block = struct.pack(">BBQLB", VERSION, flags, timestamp_ms, duration_s, len(ports))
    for proto, port in ports:
        block += struct.pack(">BH", proto, port)
    if bound_addr is not None:
        block += bound_addr.packed
    return block + b"\x00" * (REQUEST_LEN - len(block))


def parse_request_block(block):
    """The inverse of request_block: (flags, timestamp_ms, duration_s, ports,
    bound_addr). Raises ValueError on anything a server refuses."""
    version, flags, timestamp_ms, duration_s, count = struct.unpack(">BBQLB", block[:15])
    if version != VERSION:
        raise ValueError(f"version {version}")
    if flags not in (0, 1, 3, 4, 5, 7):
        raise ValueError(f"flags {flags}")
    if not 1 <= count <= MAX_PORTS:
        raise ValueError(f"port count {count}")
    ports, at = [], 15
    for _ in range(count):
        proto, port = struct.unpack(">BH", block[at:at + 3])
        if proto not in PROTOCOLS.values() or port == 0:
            raise ValueError(f"port entry {block[at:at + 3].hex()}")
        ports.append((proto, port))
        at += 3
    bound_addr = None
    if flags & FLAG_BOUND:
        size = 16 if flags & FLAG_BOUND_V6 else 4
        bound_addr = ipaddress.ip_address(block[at:at + size])
        at += size
    if any(block[at:]):
        raise ValueError("non-zero bytes after the request")
    return flags, timestamp_ms, duration_s, ports, bound_addr


def public_line(ed_pk, x_pk):
    check = sha256(LABEL_LINE + ed_pk + x_pk)[:4]
    return LINE_PREFIX + base64.urlsafe_b64encode(ed_pk + x_pk + check).decode().rstrip("=")


def subkeys(pair_prk):
    return (hkdf_expand(pair_prk, LABEL_HINT_KEY),
            hkdf_expand(pair_prk, LABEL_AEAD_KEY),
            hkdf_expand(pair_prk, LABEL_REPLAY_ID)[:16])


def slot_hint(hint_key, timestamp_ms):
    return hmac_sha256(hint_key, LABEL_SLOT + struct.pack(">Q", timestamp_ms // SLOT_MS))[:HINT_LEN]


class Mismatch(Exception):
    """A field of the document that the recomputation does not reproduce."""


def check_vector(v):
    """Recomputes every output of the vector `v` (a dict of its fields, in
    document order) and checks the knock; raises Mismatch on the first
    difference. Returns the mode."""
    public = "identity_seed" in v
    inputs, outputs = (PUBLIC_INPUTS, PUBLIC_OUTPUTS) if public else (SHARED_INPUTS, SHARED_OUTPUTS)
    if list(v) != inputs + outputs:
        raise Mismatch(f"fields are {list(v)}, expected {inputs + outputs}")

    def unhex(key, size=None):
        value = bytes.fromhex(v[key])
        if size is not None and len(value) != size:
            raise Mismatch(f"`{key}` is {len(value)} bytes, not {size}")
        return value

    def expect(key, computed):
        shown = computed.hex() if isinstance(computed, bytes) else str(computed)
        if v[key] != shown:
            raise Mismatch(f"`{key}`: the document has {v[key]}, recomputed {shown}")

    server_id = unhex("server_id", 16)
    ports = parse_ports(v["ports"])
    duration_s = int(v["duration_s"])
    bound_addr = parse_bound_addr(v["bound_addr"])
    timestamp_ms = int(v["timestamp_ms"])
    nonce = unhex("nonce", NONCE_LEN)
    padding = int(v["padding"]) % (MAX_PADDING + 1)
    if not 0 <= int(v["padding"]) <= 255:
        raise Mismatch("`padding` is not a byte")

    if public:
        seed = unhex("identity_seed", 32)
        s_sk = unhex("server_secret", 32)
        id_prk = hkdf_extract(LABEL_IDENTITY, seed)
        ed_seed = hkdf_expand(id_prk, LABEL_ED25519)
        x_sk = hkdf_expand(id_prk, LABEL_X25519)
        ed_pk = ed25519_public(ed_seed)
        x_pk = x25519_public(x_sk)
        expect("client_ed25519_pk", ed_pk)
        expect("client_x25519_pk", x_pk)
        expect("public_line", public_line(ed_pk, x_pk))
        s_pk = x25519_public(s_sk)
        expect("server_public_key", s_pk)
        dh = x25519(x_sk, s_pk)
        if dh != x25519(s_sk, x_pk):
            raise Mismatch("`dh`: the client's and the server's X25519 disagree")
        if dh == bytes(32):
            raise Mismatch("`dh` is all zero (a key of small order)")
        expect("dh", dh)
        pair_prk = hkdf_extract(LABEL_PUBLIC, dh + ed_pk + x_pk + s_pk + server_id)
    else:
        secret = unhex("client_secret", 32)
        pair_prk = hkdf_extract(LABEL_SHARED, secret + server_id)
    expect("pair_prk", pair_prk)
    hint_key, aead_key, replay_id = subkeys(pair_prk)
    expect("hint_key", hint_key)
    expect("aead_key", aead_key)
    expect("replay_id", replay_id)
    hint = slot_hint(hint_key, timestamp_ms)
    expect("hint", hint)

    block = request_block(ports, duration_s, bound_addr, timestamp_ms, public)
    if public:
        message = LABEL_SIGNATURE + s_pk + server_id + hint + nonce + block
        if len(message) != 177:
            raise Mismatch(f"the signed message is {len(message)} bytes, not 177")
        expect("signed_message", message)
        signature = ed25519_sign(ed_seed, message)
        expect("signature", signature)
        auth = signature
    else:
        auth = bytes(AUTH_LEN)
    plaintext = block + auth + bytes(padding)
    expect("plaintext", plaintext)
    knock = hint + nonce + xchacha20poly1305_seal(aead_key, nonce, hint, plaintext)
    expect("length", len(knock))
    expect("knock", knock)
    if not MIN_KNOCK_LEN <= len(knock) <= MAX_KNOCK_LEN:
        raise Mismatch(f"`length` {len(knock)} is outside {MIN_KNOCK_LEN}..={MAX_KNOCK_LEN}")

    # The server's side, on the document's bytes: hint, one AEAD, decode,
    # and (public-key) the signature with the enrolled key.
    datagram = unhex("knock")
    if datagram[:HINT_LEN] != slot_hint(hint_key, timestamp_ms):
        raise Mismatch("`knock`: its first 8 bytes are not the hint of its slot")
    opened = xchacha20poly1305_open(aead_key, datagram[HINT_LEN:HINT_LEN + NONCE_LEN],
                                    datagram[:HINT_LEN], datagram[HINT_LEN + NONCE_LEN:])
    if opened is None:
        raise Mismatch("`knock` does not open: the Poly1305 tag does not verify")
    try:
        flags, t, d, p, b = parse_request_block(opened[:REQUEST_LEN])
    except ValueError as err:
        raise Mismatch(f"`knock` opens to a plaintext a server refuses: {err}") from None
    if (t, d, p, b) != (timestamp_ms, duration_s, ports, bound_addr):
        raise Mismatch("`knock` opens to another request than the inputs")
    if bool(flags & FLAG_SIGNED) != public:
        raise Mismatch("`knock`: its signed flag disagrees with the mode")
    opened_auth = opened[REQUEST_LEN:REQUEST_LEN + AUTH_LEN]
    if any(opened[REQUEST_LEN + AUTH_LEN:]):
        raise Mismatch("`knock`: non-zero padding")
    if public:
        message = LABEL_SIGNATURE + s_pk + server_id + datagram[:HINT_LEN + NONCE_LEN] + opened[:REQUEST_LEN]
        if not ed25519_verifies(ed_pk, message, opened_auth):
            raise Mismatch("`knock`: its signature does not verify with the client's key")
    elif any(opened_auth):
        raise Mismatch("`knock`: a shared-key knock with a non-zero auth field")
    # One flipped bit anywhere is refused (hint: another slot's hint or no
    # hint at all; everywhere else: the tag).
    for i in (0, HINT_LEN, len(datagram) // 2, len(datagram) - 1):
        flipped = bytearray(datagram)
        flipped[i] ^= 0x01
        flipped = bytes(flipped)
        if flipped[:HINT_LEN] == hint and xchacha20poly1305_open(
                aead_key, flipped[HINT_LEN:HINT_LEN + NONCE_LEN], flipped[:HINT_LEN],
                flipped[HINT_LEN + NONCE_LEN:]) is not None:
            raise Mismatch(f"`knock` with byte {i} flipped still opens")
    return "public-key" if public else "shared-key"


def read_block(path):
    """The vectors of the first ```test-vectors block: a list of dicts, each in
    document order."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    opening = "```test-vectors\n"
    start = text.find(opening)
    if start < 0:
        raise ValueError(f"{path}: no ```test-vectors block")
    body = text[start + len(opening):]
    end = body.find("```")
    if end < 0:
        raise ValueError(f"{path}: the ```test-vectors block is not closed")
    vectors = []
    for number, paragraph in enumerate(body[:end].split("\n\n"), 1):
        fields = {}
        for line in paragraph.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"{path}: vector {number}: not a `key: value` line: {line!r}")
            key = key.strip()
            if key in fields:
                raise ValueError(f"{path}: vector {number}: `{key}` twice")
            fields[key] = value.strip()
        if fields:
            vectors.append(fields)
    return vectors


def check_label_table(path):
    """The document's table of labels lists exactly the labels used here (and
    the two of the server's pair-key cache), each with its true length.
    Returns a list of problems."""
    with open(path, encoding="utf-8") as f:
        rows = [line for line in f if line.startswith("| `knock/v2 ")]
    used = {LABEL_IDENTITY, LABEL_ED25519, LABEL_X25519, LABEL_SHARED, LABEL_PUBLIC,
            LABEL_HINT_KEY, LABEL_AEAD_KEY, LABEL_REPLAY_ID, LABEL_SLOT, LABEL_SIGNATURE,
            LABEL_LINE, b"knock/v2 pair cache client", b"knock/v2 pair cache server"}
    problems, listed = [], set()
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        label = cells[0].strip("`").encode()
        listed.add(label)
        if len(cells) < 2 or cells[1] != str(len(label)):
            problems.append(f"label {label.decode()!r} is {len(label)} bytes, the table says {cells[1:2]}")
    for label in sorted(used - listed):
        problems.append(f"label {label.decode()!r} is missing from the table of labels")
    for label in sorted(listed - used):
        problems.append(f"label {label.decode()!r} in the table is not one the protocol uses")
    return problems


def main(argv):
    path = argv[1] if len(argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "docs", "PROTOCOL.md")
    module = os.path.realpath(cryptography.__file__)
    print(f"cryptography {cryptography.__version__} from {module}")
    if not module.startswith(DEBIAN_DIST_PACKAGES):
        print(f"vectors.py: this cryptography is not Debian's python3-cryptography "
              f"(not under {DEBIAN_DIST_PACKAGES}): run with /usr/bin/python3", file=sys.stderr)
        return 2
    try:
        self_test()
    except AssertionError as err:
        print(f"vectors.py: self-test of {err} failed: the primitive does not match its "
              f"published test vector", file=sys.stderr)
        return 2
    print("self-tests passed: HChaCha20, XChaCha20-Poly1305, HKDF-SHA256, X25519, Ed25519")
    try:
        vectors = read_block(path)
    except (OSError, ValueError) as err:
        print(f"vectors.py: {err}", file=sys.stderr)
        return 2
    passed, failed, first = 0, 0, None
    for problem in check_label_table(path):
        print(f"FAIL labels: {problem}")
        failed += 1
        first = first or f"labels: {problem}"
    modes = {"shared-key": 0, "public-key": 0}
    for v in vectors:
        name = v.get("name", "?")
        try:
            mode = check_vector(v)
        except (Mismatch, KeyError, ValueError) as err:
            reason = f"missing field {err}" if isinstance(err, KeyError) else str(err)
            print(f"FAIL {name}: {reason}")
            failed += 1
            first = first or f"{name}: {reason}"
            continue
        print(f"ok   {name} ({mode})")
        modes[mode] += 1
        passed += 1
    if failed == 0 and (modes["shared-key"] < 1 or modes["public-key"] < 1):
        print("FAIL the block must hold vectors of both modes")
        failed += 1
        first = "the block must hold vectors of both modes"
    print(f"vectors: {passed} passed, {failed} failed")
    if failed:
        print(f"vectors.py: {path}: first mismatch: {first}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
