"""A GGUF file's metadata and tensor list, read without its data. gguf.GGUFReader builds a numpy view per
array element, which takes ~15 s for Gemma 3's 262,144-token vocabulary; this walks the header with
struct in well under a second, keeping scalars and strings and, for arrays, their length."""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from tune.errors import TuneError

SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


@dataclass
class Header:
    fields: dict = field(default_factory=dict)  # key -> scalar, str, or the element count of an array
    tensors: list = field(default_factory=list)  # (name, dims (ggml order: innermost first), ggml type id)


def read(path: Path) -> Header:
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != b"GGUF":
            raise TuneError(f"{path}: not a GGUF file")
        version, n_tensors, n_fields = struct.unpack_from("<IQQ", data, 4)
        if version < 2:
            raise TuneError(f"{path}: GGUF version {version} is too old to read")
        header, offset = Header(), 24
        for _ in range(n_fields):
            key, offset = _string(data, offset)
            (kind,), offset = struct.unpack_from("<I", data, offset), offset + 4
            header.fields[key], offset = _value(data, offset, kind)
        for _ in range(n_tensors):
            name, offset = _string(data, offset)
            (n_dims,) = struct.unpack_from("<I", data, offset)
            dims = struct.unpack_from(f"<{n_dims}Q", data, offset + 4)
            offset += 4 + 8 * n_dims
            (ggml_type,) = struct.unpack_from("<I", data, offset)
            offset += 12  # type and the data offset
            header.tensors.append((name, dims, ggml_type))
    return header


def _string(data, offset: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", data, offset)
    start = offset + 8
    return bytes(data[start:start + length]).decode("utf-8", errors="replace"), start + length


def _value(data, offset: int, kind: int):
    if kind in SCALARS:
        code = SCALARS[kind]
        return struct.unpack_from("<" + code, data, offset)[0], offset + struct.calcsize(code)
    if kind == STRING:
        return _string(data, offset)
    if kind == ARRAY:
        element, count = struct.unpack_from("<IQ", data, offset)
        offset += 12
        if element in SCALARS:
            return count, offset + count * struct.calcsize(SCALARS[element])
        for _ in range(count):  # strings (or nested arrays): each carries its own length
            _, offset = _value(data, offset, element)
        return count, offset
    raise TuneError(f"GGUF: unknown metadata value type {kind}")
