# Runtime lockdown profiles, applied by the guard before the app runs.
#
#   dev     nothing locked; when the app ends the REPL follows (development only)
#   field   Ctrl-C ignored, '' removed from sys.path, no fall-through to the REPL
#           (an app exit or crash resets the board), SD card mounted at /sd as data
#   sealed  field + REPL detached from dupterm streams + USB CDC/MSC switched off
#           where the port can (USBDevice builtin_driver; pyb.usb_mode on stm32)
#
# Threat tier: T0 (a curious owner at the USB port or REPL). None of this stops
# T3: on stock firmware anyone who can reflash the chip (esptool, DFU, BOOTSEL,
# SWD) or read it out gets around it; only the hardware steps of
# `mpseal lockdown plan` close that. What each step cannot do is in docs/lockdown.md.

import sys

PROFILES = ("dev", "field", "sealed")
# The levers, in the order apply() pulls them: field pulls the first two, sealed all.
LEVERS = ("kbd_intr off", "'' off sys.path", "dupterm detached", "UART REPL off",
          "USB CDC/MSC off")


def _pull(i):
    # Lever i of LEVERS. (One function, not one each: on a board every function and name
    # of a module the guard loads at boot costs RAM while the signature is checked.)
    if i == 0:
        import micropython

        micropython.kbd_intr(-1)
    elif i == 1:
        while "" in sys.path:
            sys.path.remove("")
        while "." in sys.path:
            sys.path.remove(".")
    elif i == 2:
        import os

        for n in range(4):
            os.dupterm(None, n)
    elif i == 3:
        import pyb  # stm32: the REPL on a UART (pyb.repl_uart); other ports use dupterm

        pyb.repl_uart(None)
    else:
        try:
            import machine

            dev = machine.USBDevice()
            dev.active(False)
            dev.builtin_driver = dev.BUILTIN_NONE
            dev.active(True)
            return
        except (ImportError, AttributeError):
            pass
        import pyb  # stm32: effective only when called from boot.py

        pyb.usb_mode(None)


_mounted = []  # where mount_sd mounted a card in this boot


def mount_sd(at="/sd"):
    """Mount an SD card as plain data: never on sys.path, nothing on it is run.

    True when a card is mounted at `at` (now or earlier in this boot: the guard
    mounts it before it looks for an unlock token, the profile asks again)."""
    import os

    if at in _mounted:
        return True
    try:
        import machine

        sd = machine.SDCard()
    except (ImportError, AttributeError, OSError, ValueError):
        return False
    try:
        os.mount(sd, at)
    except OSError:
        return False
    _mounted.append(at)
    return True


def apply(profile):
    """Apply `profile`; returns the list of what was done (or not available)."""
    done = []
    if profile not in PROFILES:
        profile = "sealed"  # an unknown profile locks down, never up
    if profile == "dev":
        return done
    for i in range(5 if profile == "sealed" else 2):
        try:
            _pull(i)
            done.append(LEVERS[i])
        except Exception as e:  # a port without this lever: report, never crash the boot
            done.append("%s: unavailable (%s)" % (LEVERS[i], type(e).__name__))
        if i == 1 and mount_sd():
            done.append("SD card at /sd (data only)")
    return done
