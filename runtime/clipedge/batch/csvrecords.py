"""CSV records read one at a time from bytes: no field-size limit of the csv module (131,072 characters,
which one base64 photo exceeds), a documented cap per row instead, and every problem confined to its row.

Azure's batch notebook writes its CSVs with `DataFrame.to_csv`: RFC 4180 quoting (a field with a comma,
quote or newline is quoted, quotes doubled), base64 cells of several MB wrapped every 76 characters. A
scanner finds where each record ends (a newline outside quotes, as Python's csv module reads it, quotes
inside an unquoted field included) while reading 1 MiB blocks; `str.find` skips over each quoted cell in
one step. A record is then decoded as UTF-8 and split into fields. A row that is not UTF-8, or larger
than the cap, becomes a Record with an error naming its line; the next row is read as usual.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

ROW_CAP = 32 * 1024 * 1024  # bytes in one row (image cell and the rest)
BLOCK = 1 << 20
FIELD_END = re.compile(rb"[,\n]")
START, FIELD, QUOTED, QUOTE = 0, 1, 2, 3


@dataclass(frozen=True)
class Record:
    line: int  # 1-based line of the file where the record starts
    offset: int  # byte offset where the record starts
    fields: list[str] | None
    error: str | None = None


def split_fields(text: str) -> list[str]:
    """The fields of one record (its line ending already removed), as csv.reader reads them."""
    fields: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            parts, j = [], i + 1
            while True:
                q = text.find('"', j)
                if q < 0:  # unterminated: the rest is the field
                    parts.append(text[j:])
                    i = n
                    break
                parts.append(text[j:q])
                if q + 1 < n and text[q + 1] == '"':
                    parts.append('"')
                    j = q + 2
                    continue
                i = q + 1
                break
            k = text.find(",", i)
            parts.append(text[i:k] if k >= 0 else text[i:])  # text after a closing quote, kept as csv does
            fields.append("".join(parts))
        else:
            k = text.find(",", i)
            fields.append(text[i:k] if k >= 0 else text[i:])
        if k < 0:
            return fields
        i = k + 1


def _strip_newline(data: bytes) -> bytes:
    if data.endswith(b"\n"):
        data = data[:-1]
        if data.endswith(b"\r"):
            data = data[:-1]
    return data


def decode_record(data: bytes, line: int, offset: int, first: bool = False) -> Record:
    body = _strip_newline(data)
    if first and body.startswith(codecs.BOM_UTF8):  # Excel's "CSV UTF-8" starts with a BOM
        body = body[len(codecs.BOM_UTF8) :]
    if not body:
        return Record(line, offset, [])  # a blank line, which csv.reader reads as an empty row
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return Record(line, offset, None, f"line {line}: not UTF-8 text (byte 0x{body[e.start]:02x} at byte {e.start})")
    return Record(line, offset, split_fields(text))


def iter_records(f: BinaryIO, cap: int = ROW_CAP) -> Iterator[Record]:
    """Every record of a CSV file opened in binary mode, in order (the header included)."""
    state, line, offset, first = START, 1, 0, True
    pieces: list[bytes] = []
    size, newlines, oversize = 0, 0, False
    block_start = 0
    while True:
        block = f.read(BLOCK)
        if not block:
            break
        pos, seg_start, n = 0, 0, len(block)
        while pos < n:
            end = -1
            if state == START:
                c = block[pos]
                if c == 0x22:  # "
                    state, pos = QUOTED, pos + 1
                elif c == 0x0A:
                    end = pos
                elif c == 0x2C:  # ,
                    pos += 1
                else:
                    state = FIELD
            elif state == FIELD:
                m = FIELD_END.search(block, pos)  # one scan to whichever comes first
                if m is None:
                    pos = n
                elif block[m.start()] == 0x0A:
                    end = m.start()
                else:
                    state, pos = START, m.start() + 1
            elif state == QUOTED:
                q = block.find(b'"', pos)
                if q < 0:
                    pos = n
                else:
                    state, pos = QUOTE, q + 1
            else:  # QUOTE: just after a quote inside a quoted field
                c = block[pos]
                if c == 0x22:
                    state, pos = QUOTED, pos + 1
                elif c == 0x2C:
                    state, pos = START, pos + 1
                elif c == 0x0A:
                    end = pos
                else:
                    state = FIELD
            if end < 0:
                continue
            seg = block[seg_start : end + 1]
            size += len(seg)
            newlines += seg.count(b"\n")
            if not oversize and size <= cap:
                pieces.append(seg)
            yield _finish(pieces, size, cap, line, offset, first)
            first = False
            line += newlines
            offset = block_start + end + 1
            pieces, size, newlines, oversize = [], 0, 0, False
            state, pos, seg_start = START, end + 1, end + 1
        seg = block[seg_start:]
        size += len(seg)
        newlines += seg.count(b"\n")
        if size > cap:
            oversize, pieces = True, []
        elif seg:
            pieces.append(seg)
        block_start += n
    if size:
        if state == QUOTED:
            yield Record(line, offset, None, f"line {line}: a quoted field is never closed (the file is cut short?)")
        else:
            yield _finish(pieces, size, cap, line, offset, first)


def _finish(pieces: list[bytes], size: int, cap: int, line: int, offset: int, first: bool) -> Record:
    if size > cap:
        return Record(line, offset, None, f"line {line}: row of {size:,} bytes exceeds the limit of {cap:,} bytes")
    return decode_record(b"".join(pieces), line, offset, first)


def count_records(f: BinaryIO) -> int:
    """How many records a CSV file holds (the header included), without decoding them."""
    return sum(1 for _ in iter_records(f, cap=0))
