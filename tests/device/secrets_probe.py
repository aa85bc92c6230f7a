# Open a sealed secrets file in the real VM with runtime/mpseal_secrets.py.
#   micropython secrets_probe.py RUNTIME_DIR FILE HARDWARE_ID
import sys
sys.path.insert(0, sys.argv[1])
import mpseal_secrets
data = open(sys.argv[2], "rb").read()
try:
    print("OK", mpseal_secrets.open_sealed(data, sys.argv[3]).decode())
except mpseal_secrets.SecretsError as e:
    print("REFUSED", e)
