"""``mpseal --help``, kept as text (python -m mpseal.cli.main --write-help)."""

HELP = (
    'Usage: mpseal [OPTIONS] COMMAND [ARGS]...\n'
    '\n'
    '  Package, sign, lock down, provision and update MicroPython products.\n'
    '\n'
    '  Every protection names the threat tier it stops (see docs/threats.md);\n'
    '  nothing here protects against an attacker with a lab (T4).\n'
    '\n'
    'Options:\n'
    '  --version   Show the version and exit.\n'
    '  -h, --help  Show this message and exit.\n'
    '\n'
    'Commands:\n'
    '  audit           Find which interfaces of a live device are open, by...\n'
    '  audit-log       The log of admin actions kept by `mpseal serve` (who,...\n'
    '  build           Compile the app with mpy-cross, pack a ROMFS image,...\n'
    "  ca              Your product's own CA: an offline root and an issuing...\n"
    '  cert            Device and server certificates, trust anchors, and what...\n'
    '  device          Devices on the update server.\n'
    '  init            Create a product project: mpseal.toml, an example app,...\n'
    '  inspect         Show what is inside an artifact (structure only; use...\n'
    '  inspect-device  Warranty check: is this device running our official...\n'
    '  install         Install a release on a board: the guard if needed,...\n'
    '  inventory       What every device runs and when it was last heard from...\n'
    "  keys            The trust root's keys: every change is a new trust root...\n"
    '  lockdown        Close the interfaces with a hole: plan per board, ESP32...\n'
    "  probe           Show what the board's firmware has (nothing is written...\n"
    '  provision       Give each device its own key, certificate, sealed...\n'
    '  registry        The device registry: devices, certificates, events;...\n'
    '  release         Publish releases and steer their rollout on an update...\n'
    '  serve           Run the update server (device API and admin API) with...\n'
    '  sim             Virtual boards: real MicroPython (unix port) with a...\n'
    '  unlock-token    A service unlock token for one device, signed by the...\n'
    '  verify          Check an artifact as a device would: structure,...\n'
)
