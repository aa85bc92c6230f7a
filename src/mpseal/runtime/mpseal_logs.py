# mpseal device logs: the boot guard's log (/mpseal/log.txt, rotated to log.txt.1 past
# 4 KB) and the app's own lines, handed to the update server in bounded batches.
#
#   app(msg)            the app hands a line over (kept in /mpseal/app-log.txt, rotated)
#   batch()             (lines, cursor): the next lines not yet acknowledged, at most
#                       LINES lines and BYTES bytes: [["guard"|"app", text], ...]
#   commit(cursor)      remember they were acknowledged
#   flush(http)         send up to ROUND_BATCHES batches on an mpseal_ota.Http; stops at the
#                       first answer that is not an acknowledgement (429: the server's rate
#                       limit; the lines wait for the next round). Never raises OSError.
#
# A cursor is, per log, the file's first line (which names its generation) and the byte
# offset sent up to; a rotation is followed into log.txt.1. Only whole lines are sent.
# Runs on stock MicroPython (json and os only); imports nothing from the host. Threat tier: T1 (what the
# server receives is bounded; nothing it answers can crash the device).

import json
import os

DIR = "/mpseal"
SOURCES = (("guard", DIR + "/log.txt"), ("app", DIR + "/app-log.txt"))
CURSOR = DIR + "/logs-sent.json"
APP_LOG_MAX = 2048
LINES = 20
BYTES = 3000
LINE_MAX = 200
ROUND_BATCHES = 3
HEAD = 64


def app(msg):
    """Keep one app log line for the server (a failing flash is ignored)."""
    path = SOURCES[1][1]
    try:
        try:
            if os.stat(path)[6] > APP_LOG_MAX:
                os.rename(path, path + ".1")
        except OSError:
            pass
        with open(path, "a") as f:
            f.write(str(msg)[:LINE_MAX].replace("\n", " ") + "\n")
    except Exception:  # why: logging never stops the app
        pass


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def _head(path):
    try:
        with open(path, "rb") as f:
            return f.readline()[:HEAD].decode()
    except (OSError, UnicodeError):
        return None


def _load():
    try:
        if _size(CURSOR) > 1024:
            return {}
        with open(CURSOR) as f:
            c = json.loads(f.read())
        if isinstance(c, dict):
            return c
    except Exception:  # why: a damaged cursor: start again (lines may be sent twice)
        pass
    return {}


def commit(cursor):
    try:  # littlefs: a rename over the old file is atomic (old or new after a power cut)
        with open(CURSOR + ".tmp", "w") as f:
            f.write(json.dumps(cursor))
        os.rename(CURSOR + ".tmp", CURSOR)
    except OSError:
        pass


def _text(raw):
    try:
        s = raw.decode()
    except UnicodeError:
        s = "".join(chr(b) if 32 <= b < 127 else "?" for b in raw)
    return s[:LINE_MAX]


def _lines(path, offset, room, nbytes):
    """Whole lines of `path` from `offset`: ([text], new offset, bytes used)."""
    out = []
    if _size(path) <= offset:
        return out, offset, nbytes
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(min(BYTES * 2, 8192))
    pos = 0
    while len(out) < room and nbytes < BYTES:
        nl = data.find(b"\n", pos)
        if nl < 0:
            break  # a line still being written: the next batch
        out.append(_text(data[pos:nl]))
        nbytes += nl - pos + 8
        pos = nl + 1
    return out, offset + pos, nbytes


def batch():
    """The next lines to send and the cursor to commit once the server took them."""
    cur = _load()
    new = {}
    lines = []
    nbytes = 0
    for name, path in SOURCES:
        head = _head(path)
        if head is None:
            continue
        seen = cur.get(name)
        if not (isinstance(seen, list) and len(seen) == 2 and isinstance(seen[1], int)):
            seen = None
        todo = []  # (path, offset) in order
        if seen is not None and seen[0] == head and _size(path) >= seen[1]:
            todo.append((path, seen[1]))
        else:
            old = path + ".1"
            if seen is not None and _head(old) == seen[0] and _size(old) >= seen[1]:
                todo.append((old, seen[1]))  # rotated since: the rest of the old file
            elif seen is None and _size(old) > 0:
                todo.append((old, 0))
            todo.append((path, 0))
        pos = None
        for p, off in todo:
            if len(lines) >= LINES or nbytes >= BYTES:
                break
            got, end, nbytes = _lines(p, off, LINES - len(lines), nbytes)
            lines.extend([name, t] for t in got)
            pos = [_head(p) or "", end]
            if end < _size(p):
                break  # this file is not done: the next batch goes on from here
        if pos is not None:
            new[name] = pos
        if len(lines) >= LINES or nbytes >= BYTES:
            break
    for name, _ in SOURCES:
        if name not in new and name in cur:
            new[name] = cur[name]
    return lines, new


def flush(http):
    """Send what is pending, batch by batch; how many lines the server acknowledged."""
    sent = 0
    for _ in range(ROUND_BATCHES):
        try:
            lines, cursor = batch()
            if not lines:
                break
            body = json.dumps({"hardware_id": http.cfg["hardware_id"], "lines": lines})
            status, data = http.request("POST", "/v1/device/logs", body.encode())
            reply = json.loads(data) if status == 200 else None
        except (OSError, ValueError, KeyError):
            break
        if not isinstance(reply, dict) or not isinstance(reply.get("recorded"), int):
            break  # 429 (rate limit), 5xx, or an answer that is not ours: next round
        commit(cursor)
        sent += len(lines)
    return sent
