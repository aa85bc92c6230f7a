# A device's DTLS client, run in the MicroPython unix port (real mbedTLS).
#
#   micropython dtls_client.py HOST PORT CERT_DER KEY_DER ANCHOR_DER SERVER_HOSTNAME
#
# The same files and checks as tls_client.py, over UDP with ssl.PROTOCOL_DTLS_CLIENT:
# handshake with CERT_REQUIRED, send one datagram, print "OK" or "FAIL <stage> <exc>".
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
        ctx = ssl.SSLContext(ssl.PROTOCOL_DTLS_CLIENT)
        if cert != "-":
            ctx.load_cert_chain(read(cert), read(key))
        stage = "load_verify_locations"
        ctx.load_verify_locations(cadata=read(anchor))
        ctx.verify_mode = ssl.CERT_REQUIRED
        stage = "connect"
        addr = socket.getaddrinfo(host, int(port), 0, socket.SOCK_DGRAM)[0][-1]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(addr)
        stage = "handshake"
        tls = ctx.wrap_socket(sock, server_hostname=hostname)
        stage = "exchange"
        tls.write(b"hello over dtls\n")
        tls.close()
    except Exception as e:  # report, never a traceback: the test reads this line
        print("FAIL", stage, repr(e))
        return 1
    print("OK")
    return 0


sys.exit(main(sys.argv))
