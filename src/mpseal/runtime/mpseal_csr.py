# The device's own key and its certificate request (PKCS#10), made on the device.
#
#   create_key(path=KEY_PATH) -> pub       a new P-256 key from os.urandom, written to
#                                          `path` (atomically: temp file, then rename) as
#                                          SEC1 ECPrivateKey DER, the file the board's TLS
#                                          loads (provisioning's device.key.der);
#                                          refuses if a key is already there
#   public_key(path=KEY_PATH) -> pub       65-byte SEC1 point
#   csr(subject, path=KEY_PATH, dns=()) -> DER bytes of a CertificationRequest signed by
#                                          the key: subject is [(attr, value)], attr one of
#                                          "CN", "O", "OU", "C", "serialNumber"; dns: names
#                                          for a subjectAltName extension request
#   sign(digest, path=KEY_PATH) -> sig     r||s over a 32-byte digest (p256_sign.sign)
#   tls_key(path=KEY_PATH) -> DER          the key file's bytes, checked, for the board's
#                                          own TLS: ctx.load_cert_chain(cert_der, tls_key())
#                                          (in RAM on the board only; never send it anywhere)
#
# Nothing here returns or prints the private key: the host gets the public key and the
# CSR, and the key file stays on the board. What protects the file itself is the board's
# lockdown (REPL/USB locked: T0; flash encryption / RDP where the chip has it: T3);
# see docs/certificates.md. Signing is not constant-time (p256_sign says what that means).

import os

import p256_sign

KEY_PATH = "/mpseal/id/device.key.der"  # where provisioning keeps the device's TLS key

_OIDS = {
    "CN": b"\x55\x04\x03", "C": b"\x55\x04\x06", "O": b"\x55\x04\x0a",
    "OU": b"\x55\x04\x0b", "serialNumber": b"\x55\x04\x05",
}
_EC_PUBLIC_KEY = b"\x2a\x86\x48\xce\x3d\x02\x01"  # 1.2.840.10045.2.1
_PRIME256V1 = b"\x2a\x86\x48\xce\x3d\x03\x01\x07"  # 1.2.840.10045.3.1.7
_ECDSA_SHA256 = b"\x2a\x86\x48\xce\x3d\x04\x03\x02"  # 1.2.840.10045.4.3.2
_EXT_REQUEST = b"\x2a\x86\x48\x86\xf7\x0d\x01\x09\x0e"  # 1.2.840.113549.1.9.14
_SAN = b"\x55\x1d\x11"  # 2.5.29.17


def _tlv(tag, body):
    n = len(body)
    if n < 0x80:
        head = bytes((tag, n))
    elif n < 0x100:
        head = bytes((tag, 0x81, n))
    else:
        head = bytes((tag, 0x82, n >> 8, n & 0xFF))
    return head + body


def _sec1(priv, pub):
    # RFC 5915 ECPrivateKey: version 1, d, [0] prime256v1, [1] public point (121 bytes)
    return _tlv(0x30, b"\x02\x01\x01" + _tlv(0x04, priv) + _tlv(0xA0, _tlv(0x06, _PRIME256V1))
                + _tlv(0xA1, _tlv(0x03, b"\x00" + pub)))


def _read(path):
    # (d, pub) of a key file this module wrote; anything else is refused
    with open(path, "rb") as f:
        data = f.read(200)
    if len(data) != 121 or data != _sec1(data[7:39], data[56:121]):
        raise ValueError("not a device-born P-256 key file: " + path)
    return data[7:39], data[56:121]


def create_key(path=KEY_PATH):
    try:
        os.stat(path)
    except OSError:
        pass
    else:
        raise ValueError("a key already exists: " + path)
    priv, pub = p256_sign.generate()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(_sec1(priv, pub))
    os.rename(tmp, path)
    if _read(path)[1] != pub:
        raise OSError("key file did not read back")
    return pub


def public_key(path=KEY_PATH):
    return _read(path)[1]


def sign(digest, path=KEY_PATH):
    priv, pub = _read(path)
    return p256_sign.sign(priv, digest, pub=pub)


def tls_key(path=KEY_PATH):
    priv, pub = _read(path)
    return _sec1(priv, pub)


def _name(subject):
    rdns = b""
    for attr, value in subject:
        oid = _OIDS.get(attr)
        if oid is None:
            raise ValueError("unknown subject attribute: " + str(attr))
        if isinstance(value, str):
            value = value.encode()
        # countryName is PrintableString (RFC 5280); the rest UTF8String
        atv = _tlv(0x06, oid) + _tlv(0x13 if attr == "C" else 0x0C, value)
        rdns += _tlv(0x31, _tlv(0x30, atv))
    return _tlv(0x30, rdns)


def csr(subject, path=KEY_PATH, dns=()):
    import hashlib

    priv, pub = _read(path)
    spki = _tlv(0x30, _tlv(0x30, _tlv(0x06, _EC_PUBLIC_KEY) + _tlv(0x06, _PRIME256V1))
                + _tlv(0x03, b"\x00" + pub))
    attrs = b""
    if dns:
        names = b""
        for d in dns:
            names += _tlv(0x82, d.encode() if isinstance(d, str) else d)  # dNSName
        ext = _tlv(0x30, _tlv(0x06, _SAN) + _tlv(0x04, _tlv(0x30, names)))
        attrs = _tlv(0x30, _tlv(0x06, _EXT_REQUEST) + _tlv(0x31, _tlv(0x30, ext)))
    info = _tlv(0x30, b"\x02\x01\x00" + _name(subject) + spki + _tlv(0xA0, attrs))
    sig = p256_sign.sign(priv, hashlib.sha256(info).digest(), pub=pub)
    alg = _tlv(0x30, _tlv(0x06, _ECDSA_SHA256))
    return _tlv(0x30, info + alg + _tlv(0x03, b"\x00" + p256_sign.der_signature(sig)))
