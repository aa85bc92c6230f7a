"""The hardware steps of a lockdown plan, per chip, in the order the vendor requires.

ESP32 / ESP32-S3 follow Espressif's "Enable Flash Encryption and Secure Boot v2
Externally" workflow (ESP-IDF security-features-enablement-workflows): flash
encryption first (its key must still be read-protectable), then Secure Boot v2,
then write-protecting RD_DIS, revoking unused digest slots, and the ROM download
mode closed at the very end (after it espefuse cannot talk to the chip). STM32:
RDP level 1, check, then level 2 last. RP2350: seal, load and check a signed
image, then OTP. RP2040 has none of these: the plan says so instead.

Shell variables in the commands: $PORT (serial port), $BUILD (the firmware build
folder), keys under keys/. esptool >= 5 spells commands with dashes
(burn-key); esptool 4.x with underscores (burn_key).
"""

from __future__ import annotations

from functools import partial

from mpseal.lockdown.model import Tier
from mpseal.lockdown.plan import Phase, Step

SB_KEY = "keys/esp32-secure-boot.pem"
SB_DIGEST = "keys/esp32-secure-boot.digest.bin"
FE_KEY = "keys/flash_encryption_key.bin"

_IRREVERSIBLE_NOTE = "IRREVERSIBLE: eFuse bits can only ever be set, never cleared."


def _chip_step(
    note: str,
    sid: str,
    title: str,
    cmds: tuple[str, ...],
    levers: tuple[str, ...],
    after: tuple[str, ...],
    verify: str,
    detail: str = "",
    closes: bool = False,
) -> Step:
    """A step that writes one-time-programmable bits of the chip (eFuses, OTP): never
    undone, so ``note`` says so first, and each stops tier T3."""
    return Step(
        sid,
        Phase.HARDWARE,
        title,
        detail=f"{note} {detail}".strip(),
        commands=cmds,
        irreversible=True,
        stops=Tier.T3,
        verify=verify,
        levers=levers,
        after=after,
        touches_chip=True,
        closes_access=closes,
    )


def hardware_steps(board: str, keep: tuple[str, ...]) -> list[Step]:
    if board in ("esp32", "esp32s3"):
        return _esp_steps(board, keep)
    if board in ("stm32", "openmv"):
        return _stm32_steps(board, keep)
    if board == "rp2350":
        return _rp2350_steps(keep)
    if board == "rp2":
        return [_rp2040_none()]
    return []


# --------------------------------------------------------------------------- ESP32 / ESP32-S3


def _esp_steps(chip: str, keep: tuple[str, ...]) -> list[Step]:
    s3 = chip == "esp32s3"
    ef = f"espefuse --port $PORT --chip {chip}"
    boot_at = "0x0" if s3 else "0x1000"
    xts = " --aes-xts" if s3 else ""

    burn = partial(_chip_step, _IRREVERSIBLE_NOTE)

    steps = [
        Step(
            "esp-sb-key",
            Phase.HARDWARE,
            "Create the Secure Boot v2 signing key (on the host)",
            detail="RSA-3072 (the only Secure Boot v2 scheme of the ESP32 and ESP32-S3). Keep "
            "it offline or in an HSM: losing it ends firmware updates, leaking it ends "
            "secure boot."
            + (
                ""
                if s3
                else " The ESP32 holds exactly one key: there is no rotation and no revocation."
            ),
            commands=(f"mpseal lockdown esp32-key --board {chip} {SB_KEY}",),
            verify=f"{SB_KEY} exists (0600) next to its public-key digest {SB_DIGEST}.",
            levers=("hw-esp-sb",),
            after=("fw-test",),
        ),
        Step(
            "esp-fe-key",
            Phase.HARDWARE,
            "Create this device's flash encryption key (on the host)",
            detail="One random key per device. It is deleted from the host at the end.",
            commands=(f"espsecure generate-flash-encryption-key {FE_KEY}",),
            verify=f"{FE_KEY} holds 32 random bytes.",
            levers=("hw-esp-fe",),
            after=("fw-test",),
        ),
        Step(
            "esp-erase",
            Phase.HARDWARE,
            "Erase the flash",
            commands=(f"esptool --port $PORT --chip {chip} erase-flash",),
            detail="Flash encryption must not be enabled yet and the flash must be blank.",
            verify=f"{ef} summary shows {'SPI_BOOT_CRYPT_CNT' if s3 else 'FLASH_CRYPT_CNT'} = 0.",
            touches_chip=True,
            after=("fw-test",),
        ),
        burn(
            "esp-fe-burn-key",
            "Burn the flash encryption key (read-protected)",
            (f"{ef} burn-key BLOCK_KEY0 {FE_KEY} XTS_AES_128_KEY",)
            if s3
            else (f"{ef} burn-key flash_encryption {FE_KEY}",),
            ("hw-esp-fe",),
            ("esp-erase", "esp-fe-key"),
            f"{ef} summary shows the key block read- and write-protected ('?? ??' for its bytes).",
            "For AES-256 use a 512-bit key (generate-flash-encryption-key --keylen 512) "
            "and the purpose XTS_AES_256_KEY."
            if s3
            else "",
        ),
        burn(
            "esp-fe-enable",
            "Enable flash encryption in release mode",
            (f"{ef} burn-efuse SPI_BOOT_CRYPT_CNT 7",)
            if s3
            else (
                f"{ef} burn-efuse FLASH_CRYPT_CNT 127",
                f"{ef} burn-efuse FLASH_CRYPT_CONFIG 0xF",
            ),
            ("hw-esp-fe",),
            ("esp-fe-burn-key",),
            f"{ef} summary: "
            + (
                "SPI_BOOT_CRYPT_CNT = 7"
                if s3
                else "FLASH_CRYPT_CNT = 127, FLASH_CRYPT_CONFIG = 0xF"
            )
            + ".",
            "All counter bits set: encryption can never be switched off again.",
        ),
        burn(
            "esp-fe-efuses",
            "Bar the ROM download mode from the encryption hardware",
            (
                (
                    f"{ef} burn-efuse DIS_DOWNLOAD_MANUAL_ENCRYPT 1 DIS_DOWNLOAD_ICACHE 1 "
                    "DIS_DOWNLOAD_DCACHE 1 DIS_DIRECT_BOOT 1"
                ),
            )
            if s3
            else (f"{ef} burn-efuse DISABLE_DL_ENCRYPT 1 DISABLE_DL_DECRYPT 1 DISABLE_DL_CACHE 1",),
            ("hw-esp-fe",),
            ("esp-fe-enable",),
            f"{ef} summary shows these bits set; esptool read-flash returns ciphertext.",
        ),
    ]
    if "debug-port" not in keep:
        steps.append(
            burn(
                "esp-jtag-off",
                "Disable JTAG for good",
                (f"{ef} burn-efuse DIS_PAD_JTAG 1 DIS_USB_JTAG 1",)
                if s3
                else (f"{ef} burn-efuse JTAG_DISABLE 1",),
                ("hw-esp-jtag-off",),
                ("esp-fe-enable",),
                f"{ef} summary shows "
                + ("DIS_PAD_JTAG and DIS_USB_JTAG" if s3 else "JTAG_DISABLE")
                + " set; OpenOCD finds no TAP.",
                "Before the write protection below, which also covers these bits.",
            )
        )
    steps += [
        burn(
            "esp-fe-wp",
            "Write-protect the security configuration",
            (f"{ef} write-protect-efuse {'DIS_ICACHE' if s3 else 'DIS_CACHE'}",),
            ("hw-esp-fe",),
            ("esp-fe-efuses", "esp-jtag-off"),
            f"{ef} summary lists the field as write-protected ('R/-').",
            "This write protection also covers several other security eFuses.",
        ),
        burn(
            "esp-sb-burn-digest",
            "Burn the Secure Boot v2 public-key digest",
            (f"{ef} burn-key BLOCK_KEY1 {SB_DIGEST} SECURE_BOOT_DIGEST0",)
            if s3
            else (f"{ef} burn-key secure_boot_v2 {SB_DIGEST}",),
            ("hw-esp-sb",),
            ("esp-fe-wp", "esp-sb-key"),
            f"{ef} summary shows the digest (readable, write-protected) and its purpose.",
            "After flash encryption: once RD_DIS is write-protected no key could be "
            "read-protected any more."
            + (
                " BLOCK_KEY0 holds the flash encryption key."
                if s3
                else " Needs chip revision v3.0 or later."
            ),
        ),
        burn(
            "esp-sb-enable",
            "Enable Secure Boot v2",
            (f"{ef} burn-efuse SECURE_BOOT_EN",) if s3 else (f"{ef} burn-efuse ABS_DONE_1",),
            ("hw-esp-sb",),
            ("esp-sb-burn-digest",),
            f"{ef} summary: {'SECURE_BOOT_EN' if s3 else 'ABS_DONE_1'} = True.",
        ),
        burn(
            "esp-rd-dis-wp",
            "Write-protect RD_DIS (keep the digest readable)",
            (f"{ef} write-protect-efuse RD_DIS",),
            ("hw-esp-sb",),
            ("esp-fe-burn-key", "esp-sb-enable"),
            f"{ef} summary lists RD_DIS as write-protected.",
            "The ROM must read the digest; this stops anyone read-protecting it later.",
        ),
    ]
    if s3:
        steps.append(
            burn(
                "esp-sb-revoke",
                "Revoke the unused Secure Boot digest slots",
                (f"{ef} burn-efuse SECURE_BOOT_KEY_REVOKE1 1 SECURE_BOOT_KEY_REVOKE2 1",),
                ("hw-esp-sb",),
                ("esp-sb-enable",),
                f"{ef} summary: SECURE_BOOT_KEY_REVOKE1 and _REVOKE2 = True.",
                "Otherwise someone with code execution could add their own key in an empty slot. "
                "If you want spare keys for rotation, burn their digests as SECURE_BOOT_DIGEST1/2 "
                "first and revoke only the slots left empty.",
            )
        )
    steps += [
        Step(
            "esp-sign",
            Phase.HARDWARE,
            "Sign the bootloader and the firmware",
            detail="Sign the separate images, never the merged firmware.bin.",
            commands=(
                (
                    f"mpseal lockdown esp32-sign --board {chip} $BUILD/bootloader/bootloader.bin "
                    f"--key {SB_KEY} -o bootloader-signed.bin"
                ),
                (
                    f"mpseal lockdown esp32-sign --board {chip} $BUILD/micropython.bin "
                    f"--key {SB_KEY} -o micropython-signed.bin"
                ),
            ),
            verify=f"mpseal lockdown esp32-verify <file> --key {SB_KEY} succeeds for both.",
            levers=("hw-esp-sb", "fw-esp-secure"),
            after=("esp-sb-key",),
        ),
        Step(
            "esp-encrypt",
            Phase.HARDWARE,
            "Encrypt the signed images for this device",
            detail="Sign first, then encrypt. Offsets must match the partition table; a "
            "partition marked 'encrypted' (vfs, romfs) is written encrypted the same way.",
            commands=(
                (
                    f"espsecure encrypt-flash-data{xts} --keyfile {FE_KEY} --address {boot_at} "
                    "--output bootloader-enc.bin bootloader-signed.bin"
                ),
                (
                    f"espsecure encrypt-flash-data{xts} --keyfile {FE_KEY} --address 0x8000 "
                    "--output partition-table-enc.bin $BUILD/partition_table/partition-table.bin"
                ),
                (
                    f"espsecure encrypt-flash-data{xts} --keyfile {FE_KEY} --address 0x10000 "
                    "--output micropython-enc.bin micropython-signed.bin"
                ),
            ),
            verify="Three *-enc.bin files; espsecure decrypt-flash-data gives the inputs back.",
            levers=("hw-esp-fe",),
            after=("esp-sign", "esp-fe-key"),
        ),
        Step(
            "esp-flash",
            Phase.HARDWARE,
            "Flash the encrypted images",
            commands=(
                (
                    f"esptool --port $PORT --chip {chip} write-flash {boot_at} "
                    "bootloader-enc.bin 0x8000 partition-table-enc.bin 0x10000 "
                    "micropython-enc.bin"
                ),
            ),
            verify="The write completes (esptool cannot verify encrypted data by reading it).",
            touches_chip=True,
            after=("esp-encrypt", "esp-rd-dis-wp", "esp-sb-revoke"),
        ),
        Step(
            "esp-check",
            Phase.HARDWARE,
            "Boot and check before closing download mode",
            detail="Reset; the bootloader log on UART0 shows the signature check and the app "
            "starts. Run the lever checks of the test unit again.",
            commands=(f"{ef} summary",),
            verify="The product boots; the summary matches every step above.",
            touches_chip=True,
            after=("esp-flash",),
        ),
    ]
    if "serial-flash" in keep:
        if s3:
            steps.append(
                burn(
                    "esp-dl-secure",
                    "Switch the ROM download mode to secure download mode",
                    (f"{ef} burn-efuse ENABLE_SECURITY_DOWNLOAD",),
                    ("hw-esp-dl-secure",),
                    ("esp-check",),
                    "esptool read-flash is refused; write-flash of signed, "
                    "encrypted images still works.",
                    "Last: espefuse cannot burn anything after this.",
                    closes=True,
                )
            )
    else:
        steps.append(
            burn(
                "esp-dl-off",
                "Close the ROM download mode",
                (f"{ef} burn-efuse DIS_DOWNLOAD_MODE",)
                if s3
                else (f"{ef} burn-efuse UART_DOWNLOAD_DIS",),
                ("hw-esp-dl-off",),
                ("esp-check",),
                "esptool chip-id no longer connects, even with GPIO0 held low.",
                "Last: after it espefuse and esptool cannot talk to the chip; updates only through "
                "the firmware itself (OTA).",
                closes=True,
            )
        )
    steps.append(
        Step(
            "esp-fe-key-delete",
            Phase.HARDWARE,
            "Delete the flash encryption key from the host",
            detail="Espressif's guidance: the host must not be able to produce images for this "
            "device any more.",
            commands=(f"shred -u {FE_KEY}",),
            verify=f"{FE_KEY} is gone.",
            after=("esp-check",),
        )
    )
    return steps


# --------------------------------------------------------------------------- STM32 / OpenMV


def _stm32_steps(board: str, keep: tuple[str, ...]) -> list[Step]:
    conn = "port=SWD" if board == "stm32" else "port=usb1"
    cli = f"STM32_Programmer_CLI -c {conn}"
    note = (
        ""
        if board == "stm32"
        else (
            " OpenMV cams: connect through the ROM bootloader (BOOT0 jumper, USB DFU) when SWD "
            "pads are not populated (not verified by mpseal)."
        )
    )
    steps = [
        Step(
            "stm32-rdp1",
            Phase.HARDWARE,
            "Read-out protection level 1 (RDP = 0xBB)",
            detail="Debugger, ROM bootloader and boot from RAM can no longer read or write the "
            "flash. Reversible only by going back to level 0, which mass-erases the "
            "flash: firmware, filesystem and every secret." + note,
            commands=(f"{cli} -ob RDP=0xBB",),
            stops=Tier.T3,
            verify=f"{cli} -ob displ shows RDP : 0xBB; after a power cycle the product boots and "
            "dfu-util -U / a debugger read fails.",
            levers=("hw-stm32-rdp1",),
            after=("fw-test",),
            touches_chip=True,
        )
    ]
    if not {"debug-port", "serial-flash"} & set(keep):
        steps.append(
            Step(
                "stm32-rdp2",
                Phase.HARDWARE,
                "Read-out protection level 2 (RDP = 0xCC)",
                detail="IRREVERSIBLE: SWD/JTAG off for good, the ROM bootloader and boot from RAM "
                "disabled, option bytes frozen. Firmware updates only through your own "
                "firmware from now on. Last step.",
                commands=(f"{cli} -ob RDP=0xCC",),
                irreversible=True,
                stops=Tier.T3,
                verify="Power-cycle: the product boots; a debugger can no longer connect at all.",
                levers=("hw-stm32-rdp2",),
                after=("stm32-rdp1",),
                touches_chip=True,
                closes_access=True,
            )
        )
    return steps


# --------------------------------------------------------------------------- RP2350 / RP2040

_OTP_NOTE = (
    "IRREVERSIBLE: OTP bits can only be set. picotool must reach the chip in BOOTSEL "
    "mode. Check each row with `picotool otp get` before the next step (the field "
    "syntax is picotool 2.x; not verified on a unit by mpseal)."
)


def _rp2350_steps(keep: tuple[str, ...]) -> list[Step]:
    otp = partial(_chip_step, _OTP_NOTE)

    steps = [
        Step(
            "rp2350-key",
            Phase.HARDWARE,
            "Create the boot signing key (secp256k1, on the host)",
            detail="The RP2350 boot ROM verifies secp256k1 ECDSA signatures. Keep the key "
            "offline: losing it ends firmware updates.",
            commands=("openssl ecparam -name secp256k1 -genkey -noout -out keys/rp2350-boot.pem",),
            verify="keys/rp2350-boot.pem exists; chmod 600 it.",
            levers=("hw-rp2350-sb",),
            after=("fw-test",),
        ),
        Step(
            "rp2350-seal",
            Phase.HARDWARE,
            "Sign (seal) the firmware and write the OTP settings",
            commands=(
                (
                    "picotool seal --sign $BUILD/firmware.uf2 firmware-signed.uf2 "
                    "keys/rp2350-boot.pem otp.json"
                ),
            ),
            verify="picotool info -a firmware-signed.uf2 shows a signature; otp.json holds "
            "bootkey0, boot_flags1.key_valid and crit1.secure_boot_enable.",
            levers=("hw-rp2350-sb",),
            after=("rp2350-key",),
        ),
        Step(
            "rp2350-load",
            Phase.HARDWARE,
            "Load the signed firmware and check it boots",
            detail="Signed images also run on a chip without secure boot: check now, while a "
            "mistake can still be undone.",
            commands=("picotool load -x firmware-signed.uf2",),
            verify="The product boots and the lever checks pass.",
            touches_chip=True,
            after=("rp2350-seal",),
        ),
        otp(
            "rp2350-sb",
            "Enable secure boot (boot key hash + SECURE_BOOT_ENABLE)",
            ("picotool otp load otp.json", "picotool otp set OTP_DATA_CRIT1.SECURE_BOOT_ENABLE 1"),
            ("hw-rp2350-sb",),
            ("rp2350-load",),
            "picotool otp get OTP_DATA_CRIT1 shows SECURE_BOOT_ENABLE = 1; the signed "
            "firmware still boots, an unsigned UF2 does not.",
            "The second command is a no-op when otp.json already enabled it.",
        ),
        otp(
            "rp2350-key-invalid",
            "Mark the unused boot key slots invalid",
            ("picotool otp set OTP_DATA_BOOT_FLAGS1.KEY_INVALID 0xe",),
            ("hw-rp2350-sb",),
            ("rp2350-sb",),
            "picotool otp get OTP_DATA_BOOT_FLAGS1 shows KEY_VALID = 0x1, KEY_INVALID = 0xe.",
            "Slots 1-3: nobody can add a key of their own later.",
        ),
    ]
    if "debug-port" not in keep:
        steps.append(
            otp(
                "rp2350-debug-off",
                "Disable the SWD debug port",
                ("picotool otp set OTP_DATA_CRIT1.DEBUG_DISABLE 1",),
                ("hw-rp2350-debug-off",),
                ("rp2350-sb",),
                "picotool otp get OTP_DATA_CRIT1 shows DEBUG_DISABLE = 1.",
            )
        )
    if "serial-flash" not in keep:
        steps.append(
            otp(
                "rp2350-bootsel-off",
                "Disable the USB/UART boot ROM interfaces",
                (
                    "picotool otp set OTP_DATA_BOOT_FLAGS0.DISABLE_BOOTSEL_UART_BOOT 1",
                    "picotool otp set OTP_DATA_BOOT_FLAGS0.DISABLE_BOOTSEL_USB_MSD_IFC 1",
                    "picotool otp set OTP_DATA_BOOT_FLAGS0.DISABLE_BOOTSEL_USB_PICOBOOT_IFC 1",
                ),
                ("hw-rp2350-bootsel-off",),
                ("rp2350-key-invalid", "rp2350-debug-off"),
                "Holding BOOTSEL at reset shows no drive; picotool finds no device.",
                "Last: afterwards picotool cannot reach the chip; updates only through the "
                "firmware itself.",
                closes=True,
            )
        )
    steps.append(
        Step(
            "rp2350-flash-clear",
            Phase.HARDWARE,
            "Know what stays readable",
            detail="The RP2350 does not encrypt its flash: firmware, filesystem, ROMFS app and any "
            "key stored there are readable with a clip on the flash chip (T3). Secure boot "
            "only stops a modified firmware from running.",
            verify="Nothing to run: a statement of the residual risk.",
        )
    )
    return steps


def _rp2040_none() -> Step:
    return Step(
        "rp2040-no-hardware-protection",
        Phase.HARDWARE,
        "RP2040: no hardware protection exists",
        detail="The RP2040 has no secure boot, no flash encryption, no way to disable SWD and "
        "no way to disable the BOOTSEL USB boot ROM. Anyone holding the board reads the "
        "whole flash (picotool save -a, SWD, or a clip on the flash chip) and runs "
        "their own firmware. On RP2040 mpseal stops T0 (and T1 through signed "
        "updates), never T3. For T3, use an RP2350 (secure boot) or an ESP32 (flash "
        "encryption + secure boot).",
        verify="Nothing to run: a statement of what this chip cannot do.",
    )
