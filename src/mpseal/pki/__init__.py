"""Certificates for devices and the servers they call (docs/certificates.md).

ca       an offline root and an issuing CA (ECDSA P-256)
certs    server and device leaves, CSRs, PEM -> DER for the device
signer   the CertSigner protocol: file keys today, an HSM later
anchor   choosing the one trust anchor a device loads
lint     what MicroPython's mbedTLS accepts, finding by finding (model in device.py)
expiry   what expires when
der      strict DER checks; files: reading PEM/DER inputs under limits
"""
