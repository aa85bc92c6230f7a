"""Strict reading of the small JSON documents mpseal signs (manifest, trust root).

Signatures cover the exact stored bytes, so the writer's encoding is fixed
(sorted keys, no spaces, ASCII) for reproducibility, and the reader accepts any
valid JSON object but checks every field's type and bounds before use.
"""

from __future__ import annotations

import json
from typing import Any

from mpseal.errors import FormatError

_HEX = frozenset("0123456789abcdef")
# Fields has methods named str, int, bool and list (f.str("name")): inside the class those
# names are the methods, so its annotations use these aliases of the built-in types.
_Str = str
_Int = int
_Bool = bool
_List = list


def dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def loads(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FormatError(f"{what} is not valid UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{what} is not a JSON object")
    return obj


class Fields:
    """Typed access to a parsed JSON object; every miss is a ``FormatError`` naming the field."""

    def __init__(self, obj: dict[str, Any], what: str) -> None:
        self._obj = obj
        self._what = what

    def _get(self, key: str, kinds: type | tuple[type, ...], optional: bool = False) -> Any:
        if key not in self._obj:
            if optional:
                return None
            raise FormatError(f"{self._what} has no field {key!r}")
        value = self._obj[key]
        # bool is an int subclass in Python: true/false never pass for a number.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _tuple(kinds)):
            raise FormatError(f"{self._what} field {key!r} has the wrong type")
        return value

    def str(self, key: _Str, max_len: _Int = 256, optional: _Bool = False) -> _Str | None:
        value: _Str | None = self._get(key, _Str, optional)
        if value is not None and len(value) > max_len:
            raise FormatError(f"{self._what} field {key!r} is longer than {max_len} characters")
        return value

    def req_str(self, key: _Str, max_len: _Int = 256) -> _Str:
        value: _Str = self._get(key, _Str)
        if len(value) > max_len:
            raise FormatError(f"{self._what} field {key!r} is longer than {max_len} characters")
        return value

    def int(self, key: _Str, lo: _Int = 0, hi: _Int = 2**63 - 1) -> _Int:
        value: _Int = self._get(key, _Int)
        if not lo <= value <= hi:
            raise FormatError(f"{self._what} field {key!r} is out of range {lo}..{hi}")
        return value

    def bool(self, key: _Str) -> _Bool:
        value: _Bool = self._get(key, _Bool)
        return value

    def hex(self, key: _Str, nbytes: _Int) -> _Str:
        value = self.req_str(key, 2 * nbytes)
        if len(value) != 2 * nbytes or not set(value) <= _HEX:
            raise FormatError(f"{self._what} field {key!r} is not {nbytes} bytes of lowercase hex")
        return value

    def obj(self, key: _Str) -> Fields:
        return Fields(self._get(key, dict), f"{self._what}.{key}")

    def list(self, key: _Str, max_len: _Int) -> _List[Any]:
        value: _List[Any] = self._get(key, _List)
        if len(value) > max_len:
            raise FormatError(f"{self._what} field {key!r} has more than {max_len} entries")
        return value

    def keys(self) -> _List[_Str]:
        return list(self._obj)

    def raw(self) -> dict[_Str, Any]:
        return dict(self._obj)


def _tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)
