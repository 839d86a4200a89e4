#!/usr/bin/env python3
"""A second implementation of the medgate sealed-image format (versions 2, 3
and 4), written from
shared/FORMAT.md (not from the Rust code), checked against the test vectors.

It covers everything the standard library can: the envelope layout, the
postcard header, key ids, the gateway's Ed25519 signature (verified with
the curve arithmetic written out below), HKDF-SHA-256, the Henon cipher
(both directions), the SHA-512 tag and the answer MACs. ChaCha20-Poly1305
and RSA-OAEP are standard primitives checked by the Rust tests.

Usage: reference.py shared/tests/vectors/v2.json shared/tests/vectors/v3.json \
           shared/tests/vectors/v4.json
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


def option_name(r):
    flag = r.take(1)[0]
    if flag not in (0, 1):
        raise ValueError("option flag must be 00 or 01")
    return r.name() if flag == 1 else None


def parse_header(raw, version):
    r = Reader(raw)
    h = {
        "message_id": r.take(16).hex(),
        "site": r.name(),
        "gateway": r.name(),
        "device": r.name(),
        "epoch": r.varint(),
        "sequence": r.varint(),
        "captured_at_ms": r.varint(),
        "modality": MODALITIES[r.varint()],
        "model_hint": option_name(r),
        "body_part": None,
        "view_position": None,
    }
    if version in (3, 4):
        h["body_part"] = option_name(r)
        h["view_position"] = option_name(r)
        if version == 3 and h["body_part"] is None and h["view_position"] is None:
            raise ValueError("a version 3 header must carry a body part or a view position")
    h.update({
        "width": r.varint(),
        "height": r.varint(),
        "pixel_format": FORMATS[r.varint()],
        "recipient": r.take(16).hex(),
        "key_id": r.take(16).hex(),
        "signer": r.take(16).hex(),
    })
    if r.at != len(raw):
        raise ValueError("bytes after the header")
    return h


def parse_envelope(data):
    assert data[:4] == b"MGSI" and data[4] in (2, 3, 4)
    (hlen,) = struct.unpack_from("<H", data, 5)
    header = data[7:7 + hlen]
    (klen,) = struct.unpack_from("<H", data, 7 + hlen)
    wrapped = data[9 + hlen:9 + hlen + klen]
    signature_at = 9 + hlen + klen
    body_at = signature_at + 64
    return {
        "version": data[4],
        "header": parse_header(header, data[4]),
        "header_bytes": header,
        "canonical": data[4:7 + hlen],
        "wrapped": wrapped,
        "signed": data[:signature_at],
        "signature": data[signature_at:body_at],
        "body": data[body_at:],
    }


# --- Ed25519 verification (RFC 8032, section 5.1.7) ----------------------------
# Twisted Edwards curve -x^2 + y^2 = 1 + d x^2 y^2 over GF(2^255 - 19), points
# in extended coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z.

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def point_add(a, b):
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    e = (y1 - x1) * (y2 - x2) % P
    f = (y1 + x1) * (y2 + x2) % P
    g = 2 * t1 * t2 * D % P
    h = 2 * z1 * z2 % P
    m, n, o, q = f - e, h - g, h + g, f + e
    return (m * n % P, o * q % P, n * o % P, m * q % P)


def scalar_mult(k, point):
    acc = (0, 1, 1, 0)
    while k:
        if k & 1:
            acc = point_add(acc, point)
        point = point_add(point, point)
        k >>= 1
    return acc


def same_point(a, b):
    return (a[0] * b[2] - b[0] * a[2]) % P == 0 and (a[1] * b[2] - b[1] * a[2]) % P == 0


def decode_point(raw):
    y = int.from_bytes(raw, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    if y >= P:
        return None
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if (v * x * x - u) % P != 0:
        x = x * SQRT_M1 % P
        if (v * x * x - u) % P != 0:
            return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


BASE = decode_point((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))


def ed25519_verify(public, message, signature):
    a, r = decode_point(public), decode_point(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= L:
        return False
    k = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % L
    # Cofactored check [8][S]B = [8]R + [8][k]A.
    left = scalar_mult(8 * s, BASE)
    right = scalar_mult(8, point_add(r, scalar_mult(k, a)))
    return same_point(left, right)


# --- answers ------------------------------------------------------------------

def put_str(text):
    raw = text.encode("utf-8")
    return struct.pack("<H", len(raw)) + raw


def answer_input(v, receiver, result):
    out = b"medgate/v2 answer\0" + bytes.fromhex(v["message_id"])
    out += put_str(v["site"]) + put_str(v["gateway"]) + put_str(v["device"])
    out += struct.pack("<Q", v["sequence"]) + put_str(receiver)
    if result is None:
        return out + b"\x01" + put_str("replay")
    if result[0] == "not_classified":
        _, reason, detail, score, model = result
        out += b"\x02" + put_str(reason) + put_str(detail)
        out += b"\x00" if score is None else b"\x01" + struct.pack("<f", score)
        return out + put_str(model) + bytes.fromhex(v["sha512"])
    label, probabilities, threshold, model = result
    out += b"\x00" + put_str(label) + struct.pack("<H", len(probabilities))
    for name in sorted(probabilities, key=lambda n: n.encode("utf-8")):
        out += put_str(name) + struct.pack("<f", probabilities[name])
    out += struct.pack("<f", threshold) + put_str(model) + bytes.fromhex(v["sha512"])
    return out


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
    def __init__(self, key, whitened):
        self.whitened = whitened
        s = 0x6D65646761746534 if whitened else 0x6D65646761746531
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
        self.counter = []
        if whitened:
            for _ in range(16):
                t = (t + GAMMA) & M64
                self.counter.append(mix64(t))
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
            for i, x in enumerate(self.x):
                bits = struct.unpack("<Q", struct.pack("<d", x))[0]
                if self.whitened:
                    self.counter[i] = (self.counter[i] + 0xA0761D6478BD642F) & M64
                    z = (self.counter[i] + bits) & M64
                    product = z * (z ^ 0xE7037ED1A0B428DB)
                    self.buf += struct.pack("<Q", (product >> 64) ^ (product & M64))
                else:
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


def henon(key, width, height, bpp, data, whitened, encrypt=True):
    # The permutation moves units of `bpp` bytes on a width x height grid
    # (original), or runs of 8, 4, 2 or 1 bytes, the longest that tiles a row
    # (whitened): the grid then has row_bytes / unit columns.
    if whitened:
        row = width * bpp
        bpp = next(u for u in (8, 4, 2, 1) if row % u == 0)
        width = row // bpp
    ks = Keystream(key, whitened)
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

def check(v, gateway_public):
    sealed = bytes.fromhex(v["sealed"])
    env = parse_envelope(sealed)
    h = env["header"]
    for field in ["message_id", "site", "gateway", "device", "epoch", "sequence",
                  "captured_at_ms", "modality", "width", "height", "pixel_format", "recipient",
                  "key_id", "model_hint", "signer"]:
        assert h[field] == v[field], (field, h[field], v[field])
    for field in ["body_part", "view_position"]:
        assert h[field] == v.get(field), (field, h[field], v.get(field))
    if env["version"] < 4:
        assert env["version"] == (2 if h["body_part"] is None and h["view_position"] is None else 3)
    whitened = env["version"] >= 4
    assert env["header_bytes"].hex() == v["header"]
    assert hashlib.sha256(env["wrapped"]).digest()[:16].hex() == v["key_id"]
    assert env["wrapped"].hex() == v["wrapped_key"]
    assert hashlib.sha256(gateway_public).digest()[:16].hex() == h["signer"]
    assert env["signature"].hex() == v["signature"]
    signed = b"medgate/v2 origin\0" + env["signed"]
    assert ed25519_verify(gateway_public, signed, env["signature"]), "signature"
    altered = bytearray(signed)
    altered[-1] ^= 1
    assert not ed25519_verify(gateway_public, bytes(altered), env["signature"])

    session, mid = bytes.fromhex(v["session_key"]), bytes.fromhex(v["message_id"])
    aead = hkdf(mid, session, b"medgate/v1 aead key+nonce", 44)
    assert aead[:32].hex() == v["aead_key"] and aead[32:].hex() == v["aead_nonce"]
    key = hkdf(mid, session, b"medgate/v1 henon key", 32)
    assert key.hex() == v["henon_key"]

    pixels = bytes.fromhex(v["pixels"])
    bpp = 2 if h["pixel_format"] == "Gray16" else 1
    n = h["width"] * h["height"] * bpp
    assert len(pixels) == n and len(env["body"]) == n + 64 + 16
    cipher = henon(key, h["width"], h["height"], bpp, pixels, whitened, True)
    assert cipher.hex() == v["henon_ciphertext"], "henon ciphertext differs"
    assert henon(key, h["width"], h["height"], bpp, cipher, whitened, False) == pixels
    tag = hashlib.sha512(env["canonical"] + pixels).hexdigest()
    assert tag == v["sha512"]

    answer_key = hkdf(mid, session, b"medgate/v2 answer key", 32)
    assert answer_key.hex() == v["answer_key"]
    result = ("pneumonia", {"pneumonia": 0.875, "normal": 0.125}, 0.5, "pneumonia-cnn-1")
    unclassified = ("not_classified", "out_of_distribution",
                    "unlike the model's training images", 12.5, "pneumonia-cnn-1")
    for made, name in [(answer_input(v, "receiver-1", result), "result"),
                       (answer_input(v, "receiver-1", None), "refusal"),
                       (answer_input(v, "receiver-1", unclassified), "not_classified")]:
        assert made.hex() == v[name + "_mac_input"], name + " MAC input"
        assert hmac.new(answer_key, made, hashlib.sha256).hexdigest() == v[name + "_mac"]


def main():
    passed = 0
    for path in sys.argv[1:]:
        doc = json.load(open(path))
        gateway_public = bytes.fromhex(doc["gateway_public_key"])
        for v in doc["vectors"]:
            check(v, gateway_public)
            print(f"ok  {v['name']}")
            passed += 1
    print(f"{passed} passed, 0 failed")


if __name__ == "__main__":
    main()
