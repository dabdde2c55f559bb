"""Decode data files as UTF-8, or fail with one line naming the file, the byte offset and the fix.

Data files are UTF-8 (a UTF-8 byte-order mark is tolerated). A UTF-16 / UTF-32 file (Windows tools write
them with a byte-order mark; without one they show as NUL bytes between ASCII letters) or a file in a
legacy 8-bit encoding is refused with the `iconv` command that converts it. This module imports no ML
library.
"""

from __future__ import annotations

import codecs

from llama_hw.errors import DataError

_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "UTF-32LE"),
    (codecs.BOM_UTF32_BE, "UTF-32BE"),
    (codecs.BOM_UTF16_LE, "UTF-16LE"),
    (codecs.BOM_UTF16_BE, "UTF-16BE"),
)
UTF8_BOM = codecs.BOM_UTF8


def _convert_hint(path: str, encoding: str) -> str:
    return f"convert it to UTF-8: iconv -f {encoding} -t UTF-8 {path} > {path}.utf8"


def check_head(path: str, head: bytes) -> None:
    """Refuse a file whose first bytes show a UTF-16 / UTF-32 encoding (with or without a byte-order mark)."""
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            raise DataError(
                f"{path}: the file is {encoding} (byte-order mark at byte 0), llama_hw reads UTF-8; "
                + _convert_hint(path, encoding.replace("LE", "").replace("BE", ""))
            )
    sample = head[:512]
    if len(sample) >= 4 and sample.count(0) * 4 >= len(sample):
        # ASCII text in UTF-16 has a NUL byte beside every letter; UTF-8 text has no NUL bytes at all.
        even_zeros = sample[0::2].count(0)
        encoding = "UTF-16BE" if even_zeros > sample[1::2].count(0) else "UTF-16LE"
        raise DataError(
            f"{path}: byte {sample.index(0)} is a NUL byte: the file looks like {encoding} without a byte-order "
            f"mark, llama_hw reads UTF-8; " + _convert_hint(path, encoding)
        )


def decode(path: str, data: bytes, base_offset: int = 0) -> str:
    """`data` (which starts at byte `base_offset` of `path`) as text; DataError naming the bad byte."""
    if base_offset == 0:
        check_head(path, data[:4096])
        if data.startswith(UTF8_BOM):
            data, base_offset = data[len(UTF8_BOM):], len(UTF8_BOM)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(not_utf8_message(path, data, err, base_offset)) from None


def not_utf8_message(path: str, data: bytes, err: UnicodeDecodeError, base_offset: int) -> str:
    offset = base_offset + err.start
    bad = data[err.start : err.start + 4].hex(" ")
    guess = guess_encoding(data)
    source = guess or "ITS-ENCODING"
    where = f"probably {guess}" if guess else "find its encoding with `file -i` and put it for ITS-ENCODING"
    return f"{path}: not UTF-8: byte offset {offset} (bytes {bad}) is not valid UTF-8, {where}; " + _convert_hint(
        path, source
    )


def guess_encoding(data: bytes) -> str | None:
    """The likely encoding of non-UTF-8 bytes, from charset_normalizer when installed (it usually is)."""
    try:
        from charset_normalizer import from_bytes
    except ImportError:
        return None
    best = from_bytes(data[: 1 << 16]).best()
    if best is None or best.encoding in ("utf_8", "ascii"):
        return None
    return best.encoding.upper().replace("_", "-")
