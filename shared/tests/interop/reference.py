#!/usr/bin/env python3
"""A second implementation of the medgate sealed-image format v1, written from
shared/FORMAT.md (not from the Rust code), checked against the test vectors.

It covers everything the standard library can: the envelope layout, the
postcard header, key ids, HKDF-SHA-256, the Henon cipher (both directions)
and the SHA-512 tag. ChaCha20-Poly1305 and RSA-OAEP are standard primitives
checked by the Rust tests.

Usage: reference.py shared/tests/vectors/v1.json
"""
import hashlib
import hmac
import json
import struct
import sys

M64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
MODALITIES = ["OT", "CR", "DX", "CT", "MR", "US", "MG", "SC"]
FORMATS = ["Gray8", "Gray16"]


# --- postcard header -------------------------------------------------------

class Reader:
    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, n):
        if self.at + n > len(self.data):
            raise ValueError("truncated")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def varint(self):
        value, shift = 0, 0
        while True:
            b = self.take(1)[0]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7

    def name(self):
        return self.take(self.varint()).decode("ascii")


def parse_header(raw):
    r = Reader(raw)
    h = {
        "message_id": r.take(16).hex(),
        "site": r.name(),
        "gateway": r.name(),
        "device": r.name(),
        "sequence": r.varint(),
        "captured_at_ms": r.varint(),
        "modality": MODALITIES[r.varint()],
        "model_hint": r.name() if r.take(1)[0] == 1 else None,
        "width": r.varint(),
        "height": r.varint(),
        "pixel_format": FORMATS[r.varint()],
        "recipient": r.take(16).hex(),
        "key_id": r.take(16).hex(),
    }
    if r.at != len(raw):
        raise ValueError("bytes after the header")
    return h


def parse_envelope(data):
    assert data[:4] == b"MGSI" and data[4] == 1
    (hlen,) = struct.unpack_from("<H", data, 5)
    header = data[7:7 + hlen]
    (klen,) = struct.unpack_from("<H", data, 7 + hlen)
    wrapped = data[9 + hlen:9 + hlen + klen]
    body_at = 9 + hlen + klen
    return {
        "header": parse_header(header),
        "header_bytes": header,
        "canonical": data[4:7 + hlen],
        "wrapped": wrapped,
        "body": data[body_at:],
    }


# --- HKDF -------------------------------------------------------------------

def hkdf(salt, ikm, info, length):
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


# --- Henon keystream ----------------------------------------------------------

def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def unit(v):
    return (v >> 11) * (2.0 ** -53)


class Keystream:
    def __init__(self, key):
        s = 0x6D65646761746531
        for i in range(4):
            (k,) = struct.unpack_from("<Q", key, 8 * i)
            s = mix64(((s ^ k) + GAMMA) & M64)
        t = s
        self.x, self.y = [], []
        for _ in range(16):
            t = (t + GAMMA) & M64
            self.x.append(unit(mix64(t)) * 0.2 - 0.1)
            t = (t + GAMMA) & M64
            self.y.append(unit(mix64(t)) * 0.2 - 0.1)
        for _ in range(128):
            self.step()
        self.buf = b""

    def step(self):
        escaped = False
        for i in range(16):
            x = self.x[i]
            nx = (1.0 - (1.4 * x) * x) + self.y[i]
            self.y[i] = 0.3 * x
            self.x[i] = nx
            escaped |= not (abs(nx) <= 2.0)
        if escaped:
            for i in range(16):
                if not (abs(self.x[i]) <= 2.0) or not (abs(self.y[i]) <= 2.0):
                    self.x[i], self.y[i] = 0.01 * (i + 1), 0.05

    def bytes(self, n):
        while len(self.buf) < n:
            self.step()
            for x in self.x:
                bits = struct.unpack("<Q", struct.pack("<d", x))[0]
                self.buf += struct.pack("<I", (bits >> 6) & 0xFFFFFFFF)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def u32(self):
        return struct.unpack("<I", self.bytes(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.bytes(8))[0]

    def below(self, n):
        return (self.u32() * n) >> 32


def shuffled(n, ks):
    items = list(range(n))
    for i in range(n - 1, 0, -1):
        j = ks.below(i + 1)
        items[i], items[j] = items[j], items[i]
    return items


def mix(v):
    m = ((v ^ (v >> 32)) * 0xD6E8FEB86659FD93) & M64
    return m ^ (m >> 29)


def words(data):
    """(offset, length) of each 8-byte word, the last possibly partial."""
    return [(i, min(8, len(data) - i)) for i in range(0, len(data), 8)]


def load(data, at, n):
    return int.from_bytes(bytes(data[at:at + n]) + bytes(8 - n), "little")


def store(data, at, n, value):
    data[at:at + n] = (value & M64).to_bytes(8, "little")[:n]


def henon(key, width, height, bpp, data, encrypt=True):
    ks = Keystream(key)
    sigma = shuffled(height, ks)
    pi = shuffled(width, ks)
    rho = [ks.below(width) for _ in range(height)]
    kappa = [ks.below(height) for _ in range(width)]
    f = [ks.u64() for _ in range(8)]
    fold = ks.u64()
    back_start = ks.u64()
    g = [ks.u64() for _ in range(8)]

    def source(y, x):
        c = pi[(x + rho[y]) % width]
        return sigma[(y + kappa[c]) % height], c

    n = len(data)
    ws = words(data)
    full = n // 8
    lane_words = max(full - 8, 0)

    def forward(buf, enc):
        k = ks.bytes(n)
        s = list(f)
        for w in range(lane_words):
            at, ln = ws[w]
            inp, kk, l = load(buf, at, ln), load(k, at, ln), w % 8
            out = inp ^ kk ^ s[l]
            s[l] = mix((s[l] + (inp if enc else out)) & M64)
            store(buf, at, ln, out)
        h = fold
        for v in s:
            h = mix((h + v) & M64)
        for at, ln in ws[lane_words:]:
            mask = (1 << (8 * ln)) - 1
            inp, kk = load(buf, at, ln), load(k, at, ln)
            out = (inp ^ kk ^ h) & mask
            h = mix((h + (inp if enc else out)) & M64)
            store(buf, at, ln, out)

    def backward(buf, enc):
        u = back_start
        for at, ln in reversed(ws[lane_words:]):
            mask = (1 << (8 * ln)) - 1
            inp = load(buf, at, ln)
            out = (inp ^ u) & mask
            u = mix((u + (inp if enc else out)) & M64)
            store(buf, at, ln, out)
        t = [mix((v + u) & M64) for v in g]
        for j, (at, ln) in enumerate(reversed(ws[:lane_words])):
            l = j % 8
            inp = load(buf, at, ln)
            out = inp ^ t[l]
            t[l] = mix((t[l] + (inp if enc else out)) & M64)
            store(buf, at, ln, out)

    if encrypt:
        buf = bytearray(n)
        for y in range(height):
            for x in range(width):
                r, c = source(y, x)
                o, i = (y * width + x) * bpp, (r * width + c) * bpp
                buf[o:o + bpp] = data[i:i + bpp]
        forward(buf, True)
        backward(buf, True)
        return bytes(buf)
    buf = bytearray(data)
    backward(buf, False)
    forward(buf, False)
    out = bytearray(n)
    for y in range(height):
        for x in range(width):
            r, c = source(y, x)
            o, i = (r * width + c) * bpp, (y * width + x) * bpp
            out[o:o + bpp] = buf[i:i + bpp]
    return bytes(out)


# --- checks -------------------------------------------------------------------

def check(v):
    sealed = bytes.fromhex(v["sealed"])
    env = parse_envelope(sealed)
    h = env["header"]
    for field in ["message_id", "site", "gateway", "device", "sequence", "captured_at_ms",
                  "modality", "width", "height", "pixel_format", "recipient", "key_id",
                  "model_hint"]:
        assert h[field] == v[field], (field, h[field], v[field])
    assert env["header_bytes"].hex() == v["header"]
    assert hashlib.sha256(env["wrapped"]).digest()[:16].hex() == v["key_id"]
    assert env["wrapped"].hex() == v["wrapped_key"]

    session, mid = bytes.fromhex(v["session_key"]), bytes.fromhex(v["message_id"])
    aead = hkdf(mid, session, b"medgate/v1 aead key+nonce", 44)
    assert aead[:32].hex() == v["aead_key"] and aead[32:].hex() == v["aead_nonce"]
    key = hkdf(mid, session, b"medgate/v1 henon key", 32)
    assert key.hex() == v["henon_key"]

    pixels = bytes.fromhex(v["pixels"])
    bpp = 2 if h["pixel_format"] == "Gray16" else 1
    n = h["width"] * h["height"] * bpp
    assert len(pixels) == n and len(env["body"]) == n + 64 + 16
    cipher = henon(key, h["width"], h["height"], bpp, pixels, True)
    assert cipher.hex() == v["henon_ciphertext"], "henon ciphertext differs"
    assert henon(key, h["width"], h["height"], bpp, cipher, False) == pixels
    tag = hashlib.sha512(env["canonical"] + pixels).hexdigest()
    assert tag == v["sha512"]


def main():
    doc = json.load(open(sys.argv[1]))
    for v in doc["vectors"]:
        check(v)
        print(f"ok  {v['name']}")
    print(f"{len(doc['vectors'])} passed, 0 failed")


if __name__ == "__main__":
    main()
