// mpseal's virtual Raspberry Pi Pico: one RP2040 in rp2040js running a stock firmware.
//
// Started by mpseal/device/pico.py, one process per power-on:
//   node picobridge.mjs --bootrom B1.bin --firmware firmware.bin --flash flash.img
//                       --uid 16HEX [--cut-after N] [--trace FILE] [--flash-timing 0]
// stdin  : bytes the USB host sends to the board's CDC serial port
// stdout : bytes the board sends over it
// fd 3   : (or --control-fd N) a socket for control (the host sends one JSON object a line, the bridge
//          answers one a line) and events (flash writes, resets, power loss)
// stderr : the bridge's own failures
//
// What this adds to rp2040js (see docs/virtual-pico.md):
// - flash writes: the boot ROM's flash_range_erase / flash_range_program (ROM table
//   codes 'RE' / 'RP') are replaced by a BKPT; the bridge does the operation on the
//   flash array and on flash.img (each one a single positional write: a process
//   killed at any moment leaves whole operations only) and returns to LR. The
//   chip's typical erase/program time passes (cycles and emulated time).
// - power cut: with --cut-after N the N-th flash operation (erase or program) is not
//   done: the chip stops there, as if power was lost before the operation started.
// - USB CDC: an armed OUT transfer is completed only when host bytes are waiting,
//   so the CPU can sleep (WFE) between them as on a real board.
// - watchdog: a watchdog reset (machine.reset(), WDT timeout) restarts the chip
//   with the flash as it is; the reset reason and scratch registers survive.
// - unique id: the flash chip's 0x4B "read unique ID" command answers --uid.
// - idle: emulated time never runs ahead of wall time while the CPU sleeps.

import fs from 'node:fs';
import net from 'node:net';
import { Simulator, USBCDC, ConsoleLogger, LogLevel } from 'rp2040js';

const CYCLE_NS = 8; // rp2040js's clock: 125 MHz, one cycle per 8 ns
const FLASH_SIZE = 2 * 1024 * 1024;
const BATCH_MS = 15; // run this long between looks at the host's input
const SLICE = 20000; // instructions between looks at the wall clock

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || i + 1 >= argv.length) {
      fail(`bad argument ${argv[i]}`);
    }
    args[argv[i].slice(2)] = argv[i + 1];
  }
  for (const key of ['bootrom', 'firmware', 'flash', 'uid']) {
    if (!(key in args)) fail(`missing --${key}`);
  }
  return args;
}

function fail(msg) {
  process.stderr.write(`picobridge: ${msg}\n`);
  process.exit(2);
}

const args = parseArgs(process.argv.slice(2));
const bootrom = fs.readFileSync(args.bootrom);
const firmware = fs.readFileSync(args.firmware);
const uid = Buffer.from(args.uid, 'hex');
if (uid.length !== 8) fail('--uid must be 8 bytes in hex');
let cutAfter = args['cut-after'] ? Number(args['cut-after']) : 0;
const flashFd = fs.openSync(args.flash, 'r+');
const flashImage = Buffer.alloc(FLASH_SIZE, 0xff);
if (fs.readSync(flashFd, flashImage, 0, FLASH_SIZE, 0) !== FLASH_SIZE) fail('flash image is not 2 MiB');
if (firmware.length > FLASH_SIZE) fail('firmware larger than the flash');
// The firmware is in flash as a UF2 drop would have put it; (re)flash it if it differs.
if (!flashImage.subarray(0, firmware.length).equals(firmware)) {
  firmware.copy(flashImage, 0);
  fs.writeSync(flashFd, firmware, 0, firmware.length, 0);
}
const traceFd = args.trace ? fs.openSync(args.trace, 'a') : null;

const control = new net.Socket({ fd: Number(args['control-fd'] ?? 3), readable: true, writable: true });
control.on('error', () => shutdown(0));
function event(obj) {
  control.write(JSON.stringify(obj) + '\n');
}

// -- the boot ROM's function table ------------------------------------------------------

function romLookup(rom, code) {
  // ROM layout (RP2040 datasheet 2.8.3): a 16-bit pointer at 0x14 to the function
  // table, pairs of (16-bit code, 16-bit address) ending with code 0.
  let p = rom.readUInt16LE(0x14);
  for (;;) {
    const c = rom.readUInt16LE(p);
    if (c === 0) return 0;
    if (c === code) return rom.readUInt16LE(p + 2);
    p += 4;
  }
}
const code = (s) => s.charCodeAt(0) | (s.charCodeAt(1) << 8);
const ERASE = romLookup(bootrom, code('RE')) & ~1;
const PROGRAM = romLookup(bootrom, code('RP')) & ~1;
if (!ERASE || !PROGRAM) fail('the boot ROM has no flash_range_erase/program');
const BKPT_ERASE = 0xbe52; // BKPT #0x52 ('R'), #0x50 ('P')
const BKPT_PROGRAM = 0xbe50;

function patchRom(words, addr, halfword) {
  const i = addr >> 2;
  if (addr & 2) words[i] = (words[i] & 0x0000ffff) | (halfword << 16);
  else words[i] = (words[i] & 0xffff0000) | halfword;
}

// -- the chip ----------------------------------------------------------------------------

let sim = null;
let cdc = null;
let pendingOut = -1; // size of the OUT transfer the device armed, -1 when none
const hostQueue = []; // Buffers from the host not yet taken by the device
let hostQueued = 0;
let writes = 0; // flash operations done since power-on
let cyclesBefore = 0; // busy cycles of chips that were reset (watchdog) since power-on
let nanosBefore = 0;
let resets = 0;
let resetPending = null;
let halted = false; // power lost (cut) or stopping
let wallStart = 0;

function newChip(prev) {
  const s = new Simulator();
  const mcu = s.rp2040;
  mcu.logger = new ConsoleLogger(LogLevel.Error, false);
  mcu.loadBootrom(new Uint32Array(new Uint8Array(bootrom).buffer));
  patchRom(mcu.bootrom, ERASE, BKPT_ERASE);
  patchRom(mcu.bootrom, PROGRAM, BKPT_PROGRAM);
  mcu.flash.set(flashImage, 0);
  mcu.onBreak = (imm) => onBreak(mcu, imm);
  if (prev) {
    const wd = mcu.peripherals[0x40058];
    wd.reason = prev.reason;
    wd.scratchData.set(prev.scratch);
  }
  mcu.peripherals[0x40058].onWatchdogTrigger = () => {
    const wd = mcu.peripherals[0x40058];
    // Stop the counter now: at 0 its periodic alarm would fire again at once, forever.
    wd.timer.enable = false;
    wd.alarm.enable = false;
    resetPending = { reason: wd.reason, scratch: Uint32Array.from(wd.scratchData) };
  };
  hookUniqueId(mcu.peripherals[0x18000]);
  hookDeviceSof(s.clock, mcu.usbCtrl);
  const c = new USBCDC(mcu.usbCtrl);
  c.onSerialData = (buf) => process.stdout.write(Buffer.from(buf));
  // Complete an armed OUT transfer only when the host has bytes for it.
  mcu.usbCtrl.onEndpointRead = (endpoint, size) => {
    if (endpoint !== c.outEndpoint) return;
    pendingOut = size;
    feedDevice();
  };
  pendingOut = -1;
  sim = s;
  cdc = c;
  // The boot ROM cannot read boot2 through rp2040js's SSI: start at boot2 in flash,
  // which sets up XIP and jumps to the firmware's reset vector.
  mcu.core.PC = 0x10000000;
}

function feedDevice() {
  if (pendingOut < 0 || hostQueued === 0 || cdc.outEndpoint < 0) return;
  const n = Math.min(pendingOut, hostQueued);
  const out = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const head = hostQueue[0];
    const take = Math.min(head.length, n - got);
    out.set(head.subarray(0, take), got);
    got += take;
    if (take === head.length) hostQueue.shift();
    else hostQueue[0] = head.subarray(take);
  }
  hostQueued -= n;
  pendingOut = -1;
  sim.rp2040.usbCtrl.endpointReadDone(cdc.outEndpoint, out);
}

// The flash chip's "read unique ID" (0x4B): 1 command byte, 4 dummy bytes, 8 id bytes,
// clocked through SSI DR0 one byte out, one byte in (pico-sdk flash_do_cmd).
function hookUniqueId(ssi) {
  const write = ssi.writeUint32.bind(ssi);
  const read = ssi.readUint32.bind(ssi);
  let pos = -1;
  ssi.writeUint32 = (offset, value) => {
    if (offset === 0x60) {
      if (pos < 0 && (value & 0xff) === 0x4b) pos = 0;
      else if (pos >= 0) pos += 1;
      if (pos >= 0) {
        ssi.dr0 = pos >= 5 ? uid[pos - 5] : 0;
        if (pos >= 12) pos = -1;
        return;
      }
    }
    if (offset === 0x08 && pos >= 0) pos = -1; // SSI disabled: a new command follows
    write(offset, value);
  };
  ssi.readUint32 = (offset) => read(offset);
}

// Start-of-frame, every 1 ms while the firmware has the device SOF interrupt enabled
// (tinyusb turns it on to flush output after the host sets DTR); reading SOF_RD
// acknowledges it, as on the chip. rp2040js generates SOF in host mode only.
const USB_SOF_RD = 0x48;
const USB_INTE = 0x90;
const INTR_DEV_SOF = 1 << 17;
function hookDeviceSof(clock, usb) {
  let frame = 0;
  let running = false;
  const alarm = clock.createAlarm(() => {
    if (!(usb.intEnable & INTR_DEV_SOF)) {
      running = false;
      return;
    }
    frame = (frame + 1) & 0x7ff;
    usb.intRaw |= INTR_DEV_SOF;
    usb.checkInterrupts();
    alarm.schedule(1e6);
  });
  const write = usb.writeUint32.bind(usb);
  usb.writeUint32 = (offset, value) => {
    write(offset, value);
    if (offset === USB_INTE && usb.intEnable & INTR_DEV_SOF && !running) {
      running = true;
      alarm.schedule(1e6);
    }
  };
  const read = usb.readUint32.bind(usb);
  usb.readUint32 = (offset) => {
    if (offset === USB_SOF_RD && !usb.hostMode) {
      usb.intRaw &= ~INTR_DEV_SOF;
      usb.checkInterrupts();
      return frame;
    }
    return read(offset);
  };
}

function onBreak(mcu, imm) {
  const core = mcu.core;
  if (imm !== 0x52 && imm !== 0x50) {
    return; // a BKPT in the firmware itself: carry on, as with no debugger attached
  }
  const r = core.registers;
  if (cutAfter && writes + 1 >= cutAfter) {
    halted = true;
    event({ event: 'cut', writes, op: imm === 0x52 ? 'erase' : 'program', cycles: cycles() });
    return;
  }
  if (imm === 0x52) {
    const addr = r[0] >>> 0;
    const count = r[1] >>> 0;
    busy(mcu, eraseNanos(addr, count, r[2] >>> 0));
    if (addr + count <= FLASH_SIZE) {
      mcu.flash.fill(0xff, addr, addr + count);
      flashImage.fill(0xff, addr, addr + count);
      fs.writeSync(flashFd, flashImage, addr, count, addr);
    }
    trace(`E ${addr} ${count}`);
  } else {
    const addr = r[0] >>> 0;
    const data = r[1] >>> 0;
    const count = r[2] >>> 0;
    busy(mcu, programNanos(addr, count));
    if (addr + count <= FLASH_SIZE) {
      const bytes = Buffer.alloc(count);
      for (let i = 0; i < count; i++) {
        bytes[i] = mcu.readUint8(data + i) & flashImage[addr + i];
      }
      bytes.copy(flashImage, addr);
      mcu.flash.set(bytes, addr);
      fs.writeSync(flashFd, bytes, 0, count, addr);
      trace(`P ${addr} ${count} ${bytes.toString('hex')}`);
    }
  }
  writes += 1;
  core.PC = core.LR & ~1;
}

// How long the flash chip is busy (the CPU waits, running from RAM with interrupts
// off): the Pico's W25Q16JV datasheet typical times. --flash-timing 0 makes them free.
const SECTOR_ERASE_NS = 45e6; // 4 KiB (tSE typ.)
const BLOCK_ERASE_NS = 150e6; // 64 KiB (tBE2 typ.)
const PAGE_PROGRAM_NS = 0.4e6; // up to 256 bytes (tPP typ.)
const flashTiming = args['flash-timing'] !== '0';

function eraseNanos(addr, count, blockSize) {
  let ns = 0;
  let a = addr;
  const end = addr + count;
  while (a < end) {
    if (blockSize === 65536 && a % 65536 === 0 && end - a >= 65536) {
      ns += BLOCK_ERASE_NS;
      a += 65536;
    } else {
      ns += SECTOR_ERASE_NS;
      a += 4096;
    }
  }
  return ns;
}

function programNanos(addr, count) {
  if (count === 0) return 0;
  const pages = Math.floor((addr + count - 1) / 256) - Math.floor(addr / 256) + 1;
  return pages * PAGE_PROGRAM_NS;
}

function busy(mcu, ns) {
  if (!flashTiming || ns <= 0) return;
  mcu.core.cycles += Math.round(ns / CYCLE_NS);
  sim.clock.tick(ns);
}

function trace(line) {
  if (traceFd !== null) fs.writeSync(traceFd, line + '\n');
}

function cycles() {
  return cyclesBefore + (sim ? sim.rp2040.core.cycles : 0);
}

function nanos() {
  return nanosBefore + (sim ? sim.clock.nanos : 0);
}

// -- running -----------------------------------------------------------------------------

let timer = null;

function run() {
  timer = null;
  if (halted) return;
  const mcu = sim.rp2040;
  const { core } = mcu;
  const clock = sim.clock;
  const began = performance.now();
  const until = began + BATCH_MS;
  try {
    runBatch(mcu, core, clock, until);
  } finally {
    runMs += performance.now() - began;
  }
}

let runMs = 0; // wall time spent emulating (not waiting for the host)

function runBatch(mcu, core, clock, until) {
  for (;;) {
    for (let i = 0; i < SLICE; i++) {
      if (core.waiting) {
        const wait = clock.nanosToNextAlarm;
        const ahead = nanos() + wait - (performance.now() - wallStart) * 1e6;
        if (ahead > 0 || wait <= 0) {
          // Sleeping: let wall time catch up (or host input wake it).
          schedule(wait <= 0 ? 5 : Math.max(1, Math.min(50, ahead / 1e6)));
          return;
        }
        clock.tick(wait);
      } else {
        clock.tick(core.executeInstruction() * CYCLE_NS);
      }
      if (resetPending || halted) break;
    }
    if (halted) return;
    if (resetPending) {
      const prev = resetPending;
      resetPending = null;
      cyclesBefore += core.cycles;
      nanosBefore += clock.nanos;
      resets += 1;
      newChip(prev);
      event({ event: 'reset', reason: prev.reason === 2 ? 'force' : 'timer', cycles: cycles(),
              nanos: Math.round(nanos()), writes });
      schedule(0);
      return;
    }
    if (performance.now() >= until) break;
  }
  schedule(0);
}

function schedule(ms) {
  if (timer !== null || halted) return;
  timer = ms > 0 ? setTimeout(run, ms) : setImmediate(run);
}

function wake() {
  if (timer !== null) {
    clearTimeout(timer);
    clearImmediate(timer);
    timer = null;
  }
  schedule(0);
}

process.stdin.on('data', (chunk) => {
  if (halted) return;
  hostQueue.push(new Uint8Array(chunk));
  hostQueued += chunk.length;
  feedDevice();
  wake();
});
process.stdin.on('end', () => shutdown(0));

let controlBuf = '';
control.on('data', (chunk) => {
  controlBuf += chunk.toString();
  let nl;
  while ((nl = controlBuf.indexOf('\n')) >= 0) {
    const line = controlBuf.slice(0, nl);
    controlBuf = controlBuf.slice(nl + 1);
    let req;
    try {
      req = JSON.parse(line);
    } catch {
      event({ error: 'bad request' });
      continue;
    }
    if (req.op === 'counters') {
      event({ reply: 'counters', cycles: cycles(), nanos: Math.round(nanos()), writes, resets,
              halted, run_ms: Math.round(runMs) });
    } else if (req.op === 'cut') {
      // Lose power at the after-th flash write from now (0: never).
      cutAfter = req.after > 0 ? writes + Number(req.after) : 0;
      event({ reply: 'cut', at: cutAfter, writes });
    } else if (req.op === 'stop') {
      shutdown(0);
    } else {
      event({ error: `unknown op ${req.op}` });
    }
  }
});
control.on('end', () => shutdown(0));

function shutdown(code) {
  halted = true;
  try {
    fs.closeSync(flashFd);
  } catch {
    // already closed
  }
  process.exit(code);
}

wallStart = performance.now();
newChip(null);
event({ event: 'power-on', erase: ERASE, program: PROGRAM });
schedule(0);
