"""Read a W&B run file (``run-<id>.wandb``) back into its protobuf records.

wandb 0.31 dropped its Python reader (``wandb.sdk.internal.datastore``); the file is still the
LevelDB log format its service writes (a 7-byte ``:W&B`` header, 32 KiB blocks, records framed as
crc32c(4) length(2) type(1), FULL/FIRST/MIDDLE/LAST), each payload a ``wandb_internal_pb2.Record``.
This is that framing, for tests only; the records are parsed by wandb's own protobuf classes.
"""

from __future__ import annotations

import struct
from pathlib import Path

BLOCK = 32768
HEADER = struct.Struct("<4sHB")  # ident, magic, version
RECORD = struct.Struct("<IHB")  # crc32c, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def payloads(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    ident, magic, _ = HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B run file")
    pos, out, pending = HEADER.size, [], b""
    while pos + RECORD.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < RECORD.size:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        _, length, kind = RECORD.unpack_from(data, pos)
        if kind == 0 and length == 0:
            break
        chunk = data[pos + RECORD.size:pos + RECORD.size + length]
        pos += RECORD.size + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
    return out


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    out = []
    for raw in payloads(path):
        rec = pb.Record()
        rec.ParseFromString(raw)
        out.append(rec)
    return out


def history(path: Path) -> list[dict[str, object]]:
    """Every ``run.log`` row as {key: value} (values JSON-decoded)."""
    import json

    rows = []
    for rec in records(path):
        if rec.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item})
    return rows


def config(path: Path) -> dict[str, object]:
    import json

    out: dict[str, object] = {}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        updates = rec.config.update if kind == "config" else rec.run.config.update if kind == "run" else []
        for item in updates:
            out[item.key] = json.loads(item.value_json)
    return out


def summary(path: Path) -> dict[str, object]:
    import json

    out: dict[str, object] = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") == "summary":
            for item in rec.summary.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out
