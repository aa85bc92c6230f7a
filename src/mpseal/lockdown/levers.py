"""The levers: every way to close a hole, by kind (catalog of the lockdown model).

Runtime levers are what a lockdown profile makes the boot guard do; firmware levers are
build options; hardware levers are stored in the chip; design levers are the board.
"""

from __future__ import annotations

from mpseal.lockdown.model import (
    ALL,
    ESP,
    ESP32,
    ESP32S3,
    HW,
    LOCKED,
    PROFILES,
    RP,
    RP2350,
    SEALED,
    STM,
    STM32,
    BuildOption,
    Check,
    Kind,
    Lever,
    Probe,
    ProbeKind,
    Reversible,
    Tier,
    dev_probe,
    host_probe,
)
from mpseal.lockdown.probes import (
    AP_MEM32,
    AP_SWITCH,
    AP_SYS_PATH,
    AP_USB_MODE,
    AP_WEBREPL_PASS,
)

# --------------------------------------------------------------------------- runtime levers

RT_NO_RETURN = Lever(
    "rt-no-return",
    Kind.RUNTIME,
    "The guard runs the app and never returns: an exit or a crash is logged and the board "
    "resets (machine.reset()), so the REPL prompt that follows main.py never appears.",
    ALL,
    Tier.T0,
    Reversible.YES,
    Check(
        "Make the app raise: the board must reset instead of printing '>>>'.",
        Probe(ProbeKind.SERIAL, "wait for the app to end; send b'\\r'", "no b'>>> ' within 5 s"),
    ),
    profiles=LOCKED,
)
RT_KBD_INTR = Lever(
    "rt-kbd-intr",
    Kind.RUNTIME,
    "micropython.kbd_intr(-1) as the first statement of main.py: Ctrl-C becomes an ordinary "
    "byte and no longer raises KeyboardInterrupt in the app.",
    ALL,
    Tier.T0,
    Reversible.YES,
    Check(
        "Send Ctrl-C (0x03) while the app runs: no 'KeyboardInterrupt' traceback.",
        Probe(ProbeKind.SERIAL, "send b'\\x03' twice", "no b'KeyboardInterrupt' within 2 s"),
    ),
    profiles=LOCKED,
    caveat="MicroPython re-enables Ctrl-C at the start of every script it runs (boot.py, "
    "main.py), so a Ctrl-C that lands before this line still interrupts.",
)
RT_SYS_PATH = Lever(
    "rt-sys-path",
    Kind.RUNTIME,
    "Remove '' and '.' from sys.path and put the verified /rom before any writable folder.",
    ALL,
    Tier.T0,
    Reversible.YES,
    Check("'' is not in sys.path.", AP_SYS_PATH),
    profiles=LOCKED,
)
RT_DUPTERM = Lever(
    "rt-dupterm",
    Kind.RUNTIME,
    "Detach every dupterm stream from the REPL: os.dupterm(None, i) for each slot "
    "(stm32: slot 1 is USB_VCP(0); WebREPL and UARTs attached by boot code live there too).",
    HW,
    Tier.T0,
    Reversible.YES,
    Check(
        "os.dupterm(None, i) returned None for every slot (nothing was attached).",
        # Detaching is the only way to look; the probe puts back what it found.
        dev_probe(
            "(lambda o: (lambda prev: ([o.dupterm(p, i) for i, p in enumerate(prev)], "
            "prev)[1])([o.dupterm(None, i) for i in range(2)]))(__import__('os'))",
            "[None, None]",
        ),
    ),
    profiles=SEALED,
    caveat="Streams built into the port's C code (the esp32 UART0 REPL, TinyUSB CDC on rp2 "
    "and esp32s3) are not dupterm slots and stay attached.",
)
RT_USB_BUILTIN_NONE = Lever(
    "rt-usb-builtin-none",
    Kind.RUNTIME,
    "machine.USBDevice(): active(False); builtin_driver = BUILTIN_NONE; active(True): the "
    "built-in USB CDC (and MSC where compiled in) disappears from the bus.",
    ESP32S3 | RP,
    Tier.T0,
    Reversible.YES,
    Check(
        "The host no longer sees a CDC-ACM interface from the board.",
        host_probe("lsusb -v -d {vid}:{pid}", "no 'CDC ACM' / 'Mass Storage' interface"),
    ),
    profiles=SEALED,
    dropped_by=frozenset({"usb-serial"}),
    caveat="esp32s3 only when the firmware uses TinyUSB (MICROPY_HW_USB_CDC); a build on the "
    "USB Serial/JTAG peripheral has no runtime switch.",
)
RT_STM32_USB = Lever(
    "rt-stm32-usb",
    Kind.RUNTIME,
    "stm32: pyb.usb_mode(None) from boot.py switches USB off; pyb.usb_mode('VCP') keeps the "
    "serial port but drops the USB drive; os.dupterm(None, 1) detaches USB_VCP(0) from the "
    "REPL so the app can use pyb.USB_VCP() as a plain data port.",
    STM,
    Tier.T0,
    Reversible.YES,
    Check("pyb.usb_mode() returns None (or 'VCP' when usb-serial is kept).", AP_USB_MODE),
    profiles=SEALED,
    caveat="pyb.usb_mode() only takes effect from boot.py, before USB starts.",
)
RT_STM32_REPL_UART = Lever(
    "rt-stm32-repl-uart",
    Kind.RUNTIME,
    "stm32: pyb.repl_uart(None) detaches the board's UART REPL (MICROPY_HW_UART_REPL); "
    "a soft reset attaches it again, so the guard does this at every boot.",
    STM,
    Tier.T0,
    Reversible.YES,
    Check("pyb.repl_uart() returns None.", dev_probe("__import__('pyb').repl_uart()", "None")),
    profiles=LOCKED,
)
RT_UART_LOGS = Lever(
    "rt-uart-logs",
    Kind.RUNTIME,
    "Logs go out on a UART that the REPL never reads: the app writes through machine.UART "
    "(TX only), or print() goes to a write-only stream on os.dupterm whose read returns "
    "nothing. UART output stays on; UART input reaches no prompt.",
    HW,
    Tier.T0,
    Reversible.YES,
    Check(
        "Log lines appear on the UART; typing on it produces no '>>>' and no echo.",
        Probe(
            ProbeKind.SERIAL,
            "send b'\\r\\x03\\x01' on the log UART",
            "no b'>>>' and no b'raw REPL'",
        ),
    ),
    only_with="uart-logs",
)
RT_SD_DATA = Lever(
    "rt-sd-data",
    Kind.RUNTIME,
    "The guard mounts the SD card at /sd after the app is verified, as data only: /sd is "
    "never on sys.path and nothing on it is executed.",
    HW,
    Tier.T0,
    Reversible.YES,
    Check(
        "'/sd' and '/sd/lib' are not in sys.path.",
        dev_probe("[p for p in __import__('sys').path if p.startswith('/sd')]", "[]"),
    ),
    only_with="sd-data",
)
RT_SKIPSD = Lever(
    "rt-skipsd",
    Kind.RUNTIME,
    "stm32: a file named SKIPSD in /flash stops the firmware from mounting the SD card at "
    "boot (checked in ports/stm32/main.c before the SD card is mounted).",
    STM32,
    Tier.T0,
    Reversible.YES,
    Check(
        "/flash/SKIPSD exists.", dev_probe("'SKIPSD' in __import__('os').listdir('/flash')", "True")
    ),
    profiles=LOCKED,
    caveat="A file on a writable filesystem: anyone who reaches the REPL once can delete it; "
    "the firmware option below is the real fix.",
)
RT_NO_WEBREPL = Lever(
    "rt-no-webrepl",
    Kind.RUNTIME,
    "Nothing starts WebREPL: the guard never calls webrepl.start(), and a frozen boot.py "
    "shadows a /boot.py that webrepl_setup would have written.",
    ESP | RP | STM32,
    Tier.T1,
    Reversible.YES,
    Check(
        "Nothing listens on TCP port 8266.",
        host_probe("nc -z -w 2 {host} 8266", "exit status != 0"),
    ),
    profiles=LOCKED,
    dropped_by=frozenset({"webrepl"}),
)
RT_WEBREPL_PASSWORD = Lever(
    "rt-webrepl-password",
    Kind.RUNTIME,
    "If WebREPL must stay: a password of the full 9 characters drawn at random from "
    "A-Z a-z 0-9 (about 53 bits), different on every device, on a network only service "
    "staff can join. mpseal checks it with webrepl_password_problems().",
    ESP | RP | STM32,
    Tier.T0,
    Reversible.YES,
    Check("webrepl_password_problems(<password>) is empty.", AP_WEBREPL_PASS),
    only_with="webrepl",
    caveat="The password still crosses the network in clear text (ws://, no TLS).",
)
RT_GUARD_VERIFIES = Lever(
    "rt-guard-verifies",
    Kind.RUNTIME,
    "The guard runs only an app whose signature and image hash it has verified (ROMFS "
    "artifact from `mpseal build`); a copied-in main.py or module is never imported.",
    ALL,
    Tier.T1,
    Reversible.YES,
    Check(
        "A tampered artifact in the slot is refused and logged ('image hash does not match').",
        dev_probe("open('/mpseal/log.txt').read()[-200:]", "contains 'refused' after tampering"),
    ),
    profiles=frozenset(PROFILES),
)

# --------------------------------------------------------------------------- firmware levers

FW_FROZEN_BOOT = Lever(
    "fw-frozen-boot",
    Kind.FIRMWARE,
    "Freeze boot.py, main.py and the guard into the firmware (manifest.py). Since MicroPython "
    "1.18 a frozen boot.py/main.py runs instead of the file of that name on the filesystem, "
    "even when the current directory is /sd.",
    HW,
    Tier.T0,
    Reversible.REFLASH,
    Check(
        "Writing a /main.py that prints a marker changes nothing at the next boot.",
        dev_probe(
            "'mpseal_guard' in __import__('sys').modules",
            "True (and __file__ starts with '.frozen')",
        ),
    ),
)
FW_COMPILER_OFF = Lever(
    "fw-compiler-off",
    Kind.FIRMWARE,
    "Build without the compiler (MICROPY_ENABLE_COMPILER 0): no exec/eval/compile, no .py "
    "file runs, the REPL cannot compile anything; frozen code and .mpy files still run.",
    HW,
    Tier.T0,
    Reversible.REFLASH,
    Check(
        "The raw REPL no longer answers (there is nothing to compile with).",
        Probe(ProbeKind.SERIAL, "send b'\\r\\x01'", "no b'raw REPL; CTRL-B to exit'"),
    ),
    options=(
        BuildOption("MICROPY_ENABLE_COMPILER", "(0)", STM),
        BuildOption(
            "MICROPY_ENABLE_COMPILER",
            "(0)",
            ESP | RP,
            overridable=False,
            note="ports/esp32 and ports/rp2 main.c call pyexec_raw_repl() and "
            "pyexec_friendly_repl() unconditionally, and those are only built with the "
            "compiler: the build needs a small main.c patch (not verified by mpseal)",
        ),
    ),
    dropped_by=frozenset({"repl-service"}),
    caveat="Not tested by mpseal on real boards; build and test on a unit first.",
)
FW_MEMX_OFF = Lever(
    "fw-memx-off",
    Kind.FIRMWARE,
    "Build without machine.mem8/16/32 (MICROPY_PY_MACHINE_MEMX 0) and without uctypes "
    "(MICROPY_PY_UCTYPES 0: uctypes.bytearray_at reads any address too).",
    HW,
    Tier.T0,
    Reversible.REFLASH,
    Check("machine has no mem32.", AP_MEM32),
    options=(
        BuildOption("MICROPY_PY_MACHINE_MEMX", "(0)", HW),
        BuildOption(
            "MICROPY_PY_UCTYPES", "(0)", HW, note="remove this line if the app needs uctypes"
        ),
    ),
)
FW_UART_REPL_OFF = Lever(
    "fw-uart-repl-off",
    Kind.FIRMWARE,
    "Build without a UART REPL.",
    HW,
    Tier.T0,
    Reversible.REFLASH,
    Check(
        "Typing on the UART at reset and after the app started gives no prompt.",
        Probe(ProbeKind.SERIAL, "send b'\\r\\x03\\x03' on the UART", "no b'>>>'"),
    ),
    options=(
        BuildOption(
            "MICROPY_HW_ENABLE_UART_REPL",
            "(0)",
            ESP | RP,
            note="esp32 without native USB then has no REPL stream at all; "
            "print() output goes nowhere unless the app routes it",
        ),
        BuildOption(
            "MICROPY_HW_UART_REPL", "", STM, note="#undef only: the board header defines it"
        ),
    ),
    dropped_by=frozenset({"repl-service"}),
)
FW_USB_CDC_OFF = Lever(
    "fw-usb-cdc-off",
    Kind.FIRMWARE,
    "Build without the USB serial REPL.",
    ESP32S3 | RP | STM,
    Tier.T0,
    Reversible.REFLASH,
    Check(
        "No CDC-ACM interface on the host.",
        host_probe("lsusb -v -d {vid}:{pid}", "no 'CDC ACM' interface"),
    ),
    options=(
        BuildOption("MICROPY_HW_USB_CDC", "(0)", ESP32S3 | RP),
        BuildOption(
            "MICROPY_HW_ESP_USB_SERIAL_JTAG",
            "(0)",
            ESP32S3,
            note="otherwise the esp32s3 build falls back to the USB Serial/JTAG REPL",
        ),
        BuildOption(
            "MICROPY_HW_ENABLE_USB", "(0)", STM, note="removes USB entirely (pyb.usb_mode too)"
        ),
    ),
    dropped_by=frozenset({"usb-serial", "repl-service"}),
)
FW_USB_MSC_OFF = Lever(
    "fw-usb-msc-off",
    Kind.FIRMWARE,
    "Build without the USB drive (MICROPY_HW_USB_MSC 0).",
    RP | STM,
    Tier.T0,
    Reversible.REFLASH,
    Check(
        "No Mass Storage interface on the host.",
        host_probe("lsusb -v -d {vid}:{pid}", "no 'Mass Storage' interface"),
    ),
    options=(BuildOption("MICROPY_HW_USB_MSC", "(0)", RP | STM),),
)
FW_SWITCH_OFF = Lever(
    "fw-switch-off",
    Kind.FIRMWARE,
    "Build without the boot-mode switch (MICROPY_HW_HAS_SWITCH 0): holding USR at reset no "
    "longer selects safe mode or a filesystem reset (pyb.Switch disappears too).",
    STM32,
    Tier.T0,
    Reversible.REFLASH,
    Check("pyb has no Switch.", AP_SWITCH),
    options=(BuildOption("MICROPY_HW_HAS_SWITCH", "(0)", STM32),),
)
FW_SD_MOUNT_OFF = Lever(
    "fw-sd-mount-off",
    Kind.FIRMWARE,
    "Build without mounting the SD card at boot (MICROPY_HW_SDCARD_MOUNT_AT_BOOT 0): the SD "
    "card never becomes the current directory and its boot.py/main.py never run.",
    STM32,
    Tier.T0,
    Reversible.REFLASH,
    Check(
        "With an SD card holding a main.py that prints a marker, the marker never appears.",
        Probe(
            ProbeKind.MANUAL,
            "insert an SD card with a marker main.py and reset",
            "no marker on the console",
        ),
    ),
    options=(BuildOption("MICROPY_HW_SDCARD_MOUNT_AT_BOOT", "(0)", STM32),),
)
FW_SDCARD_OFF = Lever(
    "fw-sdcard-off",
    Kind.FIRMWARE,
    "Build without the SD card driver (MICROPY_HW_ENABLE_SDCARD 0).",
    ESP | STM32,
    Tier.T0,
    Reversible.REFLASH,
    Check("machine has no SDCard.", dev_probe("hasattr(__import__('machine'), 'SDCard')", "False")),
    options=(BuildOption("MICROPY_HW_ENABLE_SDCARD", "(0)", ESP | STM32),),
    dropped_by=frozenset({"sd-data"}),
)
FW_WEBREPL_OFF = Lever(
    "fw-webrepl-off",
    Kind.FIRMWARE,
    "Build without WebREPL (MICROPY_PY_WEBREPL 0).",
    ESP | RP | STM32,
    Tier.T1,
    Reversible.REFLASH,
    Check("import _webrepl fails.", dev_probe("__import__('_webrepl')", "raises ImportError")),
    options=(
        BuildOption("MICROPY_PY_WEBREPL", "(0)", RP),
        BuildOption(
            "MICROPY_PY_WEBREPL",
            "(0)",
            ESP | STM32,
            overridable=False,
            note="mpconfigport.h sets it unconditionally on esp32 and stm32: needs a port "
            "patch; without it WebREPL stays inert unless code calls webrepl.start()",
        ),
    ),
    dropped_by=frozenset({"webrepl"}),
)
FW_ESP_SECURE = Lever(
    "fw-esp-secure",
    Kind.FIRMWARE,
    "Build the ESP-IDF bootloader and app for Secure Boot v2 and flash encryption in release "
    "mode (sdkconfig.mpseal): without it the second-stage bootloader does not verify the app.",
    ESP,
    Tier.T3,
    Reversible.REFLASH,
    Check(
        "The bootloader log shows secure boot and flash encryption checks at boot.",
        Probe(ProbeKind.MANUAL, "read the boot log on UART0", "'secure boot' verification lines"),
    ),
    options=(
        BuildOption("CONFIG_SECURE_BOOT", "y", ESP, file="sdkconfig"),
        BuildOption("CONFIG_SECURE_BOOT_V2_ENABLED", "y", ESP, file="sdkconfig"),
        BuildOption(
            "CONFIG_SECURE_BOOT_BUILD_SIGNED_BINARIES",
            "n",
            ESP,
            file="sdkconfig",
            note="images are signed afterwards with `mpseal lockdown esp32-sign`",
        ),
        BuildOption("CONFIG_SECURE_FLASH_ENC_ENABLED", "y", ESP, file="sdkconfig"),
        BuildOption("CONFIG_SECURE_FLASH_ENCRYPTION_MODE_RELEASE", "y", ESP, file="sdkconfig"),
        BuildOption(
            "CONFIG_ESP32_REV_MIN_3",
            "y",
            ESP32,
            file="sdkconfig",
            note="Secure Boot v2 on the ESP32 needs chip revision v3.0 or later",
        ),
        BuildOption(
            "CONFIG_SECURE_DISABLE_ROM_DL_MODE",
            "y",
            ESP32,
            file="sdkconfig",
            dropped_by=frozenset({"serial-flash"}),
        ),
        BuildOption(
            "CONFIG_SECURE_INSECURE_ALLOW_DL_MODE",
            "y",
            ESP32,
            file="sdkconfig",
            only_with="serial-flash",
        ),
        BuildOption("CONFIG_SECURE_ENABLE_SECURE_ROM_DL_MODE", "y", ESP32S3, file="sdkconfig"),
        BuildOption(
            "CONFIG_SECURE_BOOT_INSECURE",
            "y",
            ESP,
            file="sdkconfig",
            only_with="debug-port",
            note="needed for the next line",
        ),
        BuildOption(
            "CONFIG_SECURE_BOOT_ALLOW_JTAG",
            "y",
            ESP,
            file="sdkconfig",
            only_with="debug-port",
            note="otherwise the secure bootloader may burn the JTAG-disable eFuse "
            "itself on first boot (not verified on a unit)",
        ),
    ),
    caveat="The bigger secure bootloader may no longer fit below the partition table at "
    "0x8000: then move CONFIG_PARTITION_TABLE_OFFSET and adapt the board's partitions "
    "CSV (ESP-IDF: 'Secure Boot bootloader size'). Mark the vfs and romfs partitions "
    "'encrypted' in that CSV, or flash encryption leaves them in clear text.",
)

# --------------------------------------------------------------------------- hardware levers

HW_ESP_FE = Lever(
    "hw-esp-fe",
    Kind.HARDWARE,
    "ESP flash encryption in release mode: key burned into a read-protected eFuse block, "
    "encryption counter burned to its last value, ROM download mode barred from the "
    "encryption hardware. The bootloader, partition table, app partitions and every "
    "partition marked 'encrypted' read back as ciphertext.",
    ESP,
    Tier.T3,
    Reversible.NO,
    Check(
        "espefuse summary: FLASH_CRYPT_CNT = 127 (esp32) or SPI_BOOT_CRYPT_CNT = 7 "
        "(esp32s3); a raw read of the app partition is not the plain image.",
        host_probe(
            "espefuse --port {port} summary", "FLASH_CRYPT_CNT = 127 | SPI_BOOT_CRYPT_CNT = 7"
        ),
    ),
    caveat="Partitions not marked 'encrypted' (MicroPython's vfs filesystem, nvs with Wi-Fi "
    "credentials, romfs) stay readable unless the partition table says otherwise.",
)
HW_ESP_SB = Lever(
    "hw-esp-sb",
    Kind.HARDWARE,
    "ESP Secure Boot v2: the SHA-256 digest of the signing public key is burned into eFuse; "
    "the ROM checks the bootloader and the bootloader checks the app against it on every "
    "boot. A firmware not signed with your key does not run.",
    ESP,
    Tier.T3,
    Reversible.NO,
    Check(
        "espefuse summary: ABS_DONE_1 = True (esp32) or SECURE_BOOT_EN = True (esp32s3); "
        "an unsigned app on a test unit does not boot.",
        host_probe("espefuse --port {port} summary", "ABS_DONE_1 = True | SECURE_BOOT_EN = True"),
    ),
    caveat="ESP32 (v3.0+) holds one key and cannot revoke it; the ESP32-S3 holds up to three "
    "and can revoke each. Losing the key ends firmware updates; leaking it ends "
    "secure boot.",
)
HW_ESP_JTAG_OFF = Lever(
    "hw-esp-jtag-off",
    Kind.HARDWARE,
    "Burn the JTAG-disable eFuses: JTAG_DISABLE (esp32); DIS_PAD_JTAG and DIS_USB_JTAG (esp32s3).",
    ESP,
    Tier.T3,
    Reversible.NO,
    Check(
        "espefuse summary shows them set; a JTAG adapter finds no TAP.",
        host_probe("espefuse --port {port} summary", "JTAG_DISABLE = True | DIS_PAD_JTAG = True"),
    ),
    dropped_by=frozenset({"debug-port"}),
)
HW_ESP_DL_OFF = Lever(
    "hw-esp-dl-off",
    Kind.HARDWARE,
    "Close the ROM download mode: UART_DOWNLOAD_DIS (esp32, v3.0+) or DIS_DOWNLOAD_MODE "
    "(esp32s3). After this espefuse and esptool can no longer talk to the chip.",
    ESP,
    Tier.T3,
    Reversible.NO,
    Check(
        "esptool chip-id no longer connects.",
        host_probe("esptool --port {port} chip-id", "fails to connect"),
    ),
    dropped_by=frozenset({"serial-flash"}),
)
HW_ESP_DL_SECURE = Lever(
    "hw-esp-dl-secure",
    Kind.HARDWARE,
    "esp32s3: ENABLE_SECURITY_DOWNLOAD (secure download mode): esptool can still write the "
    "flash (signed, encrypted images), but not read it or run code in RAM.",
    ESP32S3,
    Tier.T3,
    Reversible.NO,
    Check(
        "esptool read-flash is refused ('Secure Download Mode').",
        host_probe("esptool --port {port} --no-stub read-flash 0 4096 /dev/null", "refused"),
    ),
    only_with="serial-flash",
)
HW_STM32_RDP1 = Lever(
    "hw-stm32-rdp1",
    Kind.HARDWARE,
    "STM32 read-out protection level 1 (option byte RDP = 0xBB): a debugger, the ROM "
    "bootloader (DFU/USART) and boot from RAM can no longer read or write the flash. Going "
    "back to level 0 mass-erases the flash (firmware, filesystem and secrets).",
    STM,
    Tier.T3,
    Reversible.ERASE,
    Check(
        "STM32_Programmer_CLI -ob displ shows RDP = 0xBB; dfu-util -U fails.",
        host_probe("STM32_Programmer_CLI -c port=SWD -ob displ", "RDP : 0xBB"),
    ),
    caveat="Level 1 has published bypasses on some STM32 families (e.g. F0/F1); a debugger "
    "may still reach RAM and peripherals.",
)
HW_STM32_RDP2 = Lever(
    "hw-stm32-rdp2",
    Kind.HARDWARE,
    "STM32 read-out protection level 2 (option byte RDP = 0xCC): debug (SWD/JTAG) is off "
    "for good, the system bootloader and boot from RAM are disabled, option bytes can no "
    "longer change. Only your own firmware can update itself afterwards.",
    STM,
    Tier.T3,
    Reversible.NO,
    Check(
        "A debugger can no longer connect at all.",
        host_probe("STM32_Programmer_CLI -c port=SWD", "connection fails"),
    ),
    dropped_by=frozenset({"debug-port", "serial-flash"}),
)
HW_RP2350_SB = Lever(
    "hw-rp2350-sb",
    Kind.HARDWARE,
    "RP2350 secure boot: the SHA-256 of your secp256k1 boot key in OTP (BOOTKEY0, "
    "BOOT_FLAGS1.KEY_VALID) and CRIT1.SECURE_BOOT_ENABLE: the boot ROM runs only images "
    "sealed with `picotool seal --sign`. Unused key slots are marked invalid.",
    RP2350,
    Tier.T3,
    Reversible.NO,
    Check(
        "picotool otp get OTP_DATA_CRIT1 shows SECURE_BOOT_ENABLE = 1; an unsigned UF2 "
        "does not boot.",
        host_probe("picotool otp get OTP_DATA_CRIT1", "SECURE_BOOT_ENABLE = 1"),
    ),
    caveat="Secure boot checks what runs; it does not encrypt the flash.",
)
HW_RP2350_DEBUG_OFF = Lever(
    "hw-rp2350-debug-off",
    Kind.HARDWARE,
    "RP2350: OTP CRIT1.DEBUG_DISABLE: the SWD debug port is off for good.",
    RP2350,
    Tier.T3,
    Reversible.NO,
    Check(
        "picotool otp get OTP_DATA_CRIT1 shows DEBUG_DISABLE = 1; SWD finds no target.",
        host_probe("picotool otp get OTP_DATA_CRIT1", "DEBUG_DISABLE = 1"),
    ),
    dropped_by=frozenset({"debug-port"}),
)
HW_RP2350_BOOTSEL_OFF = Lever(
    "hw-rp2350-bootsel-off",
    Kind.HARDWARE,
    "RP2350: OTP BOOT_FLAGS0 DISABLE_BOOTSEL_USB_PICOBOOT_IFC, DISABLE_BOOTSEL_USB_MSD_IFC "
    "and DISABLE_BOOTSEL_UART_BOOT: the USB boot ROM (UF2 drive, picotool) is gone.",
    RP2350,
    Tier.T3,
    Reversible.NO,
    Check(
        "Holding BOOTSEL at reset shows no RP2350 drive and picotool finds no device.",
        host_probe("picotool info", "no accessible RP-series devices"),
    ),
    dropped_by=frozenset({"serial-flash"}),
)

# --------------------------------------------------------------------------- design levers

DS_NO_HEADER = Lever(
    "ds-no-header",
    Kind.DESIGN,
    "No UART/SWD/JTAG header or labelled pads on production boards; test points only under "
    "the enclosure; boot-mode pins (GPIO0, BOOT0, BOOTSEL/QSPI_SS) not reachable from outside.",
    HW,
    Tier.T0,
    Reversible.YES,
    Check(
        "Inspect a production unit: no connector reaches these signals.",
        Probe(ProbeKind.MANUAL, "inspect the enclosure and the board", "no reachable pads"),
    ),
    caveat="Raises the effort for a curious owner; someone with a soldering iron (T3) gets in.",
)
DS_NO_BUTTON = Lever(
    "ds-no-button",
    Kind.DESIGN,
    "No user-reachable boot or USR button on production units.",
    HW,
    Tier.T0,
    Reversible.YES,
    Check("Inspect a production unit.", Probe(ProbeKind.MANUAL, "inspect", "no boot button")),
)
