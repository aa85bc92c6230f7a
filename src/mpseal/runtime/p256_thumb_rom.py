# p256_thumb as the guard's ROMFS image carries it (guard_install.guard_rom_image puts this
# module there as lib/p256_thumb.mpy): the same run(ws, prog, n, reps), on the same machine
# code (p256_thumb.py's, as mpy-cross compiles it for the board), but that code runs where it
# lies in the memory-mapped flash, in lib/p256_thumb.bin beside this module. MicroPython
# copies an .mpy's machine code onto the heap at import even from ROMFS: p256_thumb.mpy held
# ~6 KB of a Pico's RAM while the boot's signature was checked; this holds ~100 bytes.
#
# p256_thumb.bin: one byte k (0 or 1), k bytes of padding, the code: the image is laid out so
# that the code starts at an even address (Thumb instructions are halfword-aligned; the
# partition starts on a flash sector). A VfsRom file's buffer is the flash itself.
#
# Only where guard_install writes it: anywhere else (no .bin beside it, a file system that
# is not memory-mapped) the import fails and p256 verifies with Python integers.

# ruff: noqa: F821 - the inline assembler's names (registers, instructions, labels)

import micropython


@micropython.asm_thumb
def run(r0, r1, r2, r3):
    # n (r2) = 0: set up, r0 the code (even address): its address + 1 (Thumb state) is kept in
    # the two halfwords below; returns r0. Else: call the code with r0-r3 as they are.
    mov(r4, pc)  # r4 = the address of this instruction + 4: the halfwords below
    b(go)
    data(2, 0, 0)
    label(go)
    cmp(r2, 0)
    bne(call)
    mov(r5, r0)
    add(r5, 1)
    strh(r5, [r4, 0])
    lsr(r5, r5, 16)
    strh(r5, [r4, 2])
    b(done)
    label(call)
    ldrh(r5, [r4, 2])
    lsl(r5, r5, 16)
    ldrh(r6, [r4, 0])
    orr(r5, r6)
    mov(r6, pc)  # r6 = here + 4; + 5: `done` (here + 8), in Thumb state
    add(r6, 5)
    mov(lr, r6)
    bx(r5)  # the code returns to lr (its own push/pop keep r4-r7)
    label(done)


def _code():
    with open(__file__[:-4] + ".bin", "rb") as f:
        mv = memoryview(f)  # (the data stays in flash once the file is closed)
    return mv[1 + mv[0]:]


if run(_code(), 0, 0, 0) & 1:
    raise ImportError("p256_thumb.bin is not at an even address")
_code = None
