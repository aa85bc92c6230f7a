# A device's TLS client, run in the MicroPython unix port (real mbedTLS).
#
#   micropython tls_client.py HOST PORT CERT_DER KEY_DER ANCHOR_DER SERVER_HOSTNAME
#
# CERT_DER/KEY_DER may be "-" for no client certificate. Loads the files exactly as
# a device loads them from its flash, does a TLS handshake with CERT_REQUIRED, sends
# one line and prints "OK <reply>" or "FAIL <stage> <exception>" (exit status 0 / 1).
import socket
import ssl
import sys


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main(argv):
    host, port, cert, key, anchor, hostname = argv[1:7]
    stage = "load_cert_chain"
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if cert != "-":
            ctx.load_cert_chain(read(cert), read(key))
        stage = "load_verify_locations"
        ctx.load_verify_locations(cadata=read(anchor))
        ctx.verify_mode = ssl.CERT_REQUIRED
        stage = "connect"
        addr = socket.getaddrinfo(host, int(port))[0][-1]
        sock = socket.socket()
        sock.connect(addr)
        stage = "handshake"
        tls = ctx.wrap_socket(sock, server_hostname=hostname)
        stage = "exchange"
        tls.write(b"hello from the device\n")
        reply = tls.readline()
        tls.close()
    except Exception as e:  # report, never a traceback: the test reads this line
        print("FAIL", stage, repr(e))
        return 1
    print("OK", reply.decode().strip())
    return 0


sys.exit(main(sys.argv))
