"""Reading an uploaded text file the way a person meant it: its encoding, its lines, its kind.

- **Encoding**, from a sample of the first bytes: a BOM says UTF-8 or UTF-16; NULs in every
  other byte say UTF-16 without a BOM; otherwise strict UTF-8 if the sample decodes as such;
  otherwise cp1251 when most of its high letters stand in runs of three or more (Russian
  words are such runs in cp1251, while accented Latin letters stand between plain ones),
  else latin-1 (charset-normalizer, tried first, took "Фёдор" for cp1252 and short
  French lines for cp1251);
  a latin-1 guess holding bytes 0x80-0x9F, which Windows writes for € and curly quotes, is
  read as cp1252.
- **Lines**, bounded: read in chunks, split on LF, decoded one line at a time so an error
  names its line; a line longer than the limit or holding a NUL byte stops the import with
  the line's number, without ever holding more than the limit in memory.
- **Kind**: plain text with one address a line when the first line is an address with no
  delimiter in it; otherwise CSV, its delimiter sniffed from the sample among , ; TAB |.
"""

from __future__ import annotations

import codecs
import csv
from typing import IO, Iterator

from .errors import ImportFailed

SAMPLE_SIZE = 64 * 1024
DELIMITERS = ",;\t|"
_CONTROL_OK = frozenset(b"\t\n\r\x0c\x08\x1b")
# Magic numbers of files people upload by mistake (the archives we read are sniffed elsewhere).
_BINARY_MAGIC = {
    b"%PDF": "a PDF document",
    b"\x89PNG": "a PNG image",
    b"GIF8": "a GIF image",
    b"\xff\xd8\xff": "a JPEG image",
    b"\x1f\x8b": "a gzip file",
    b"7z\xbc\xaf\x27\x1c": "a 7-Zip archive",
    b"BZh": "a bzip2 file",
    b"\xfd7zXZ\x00": "an xz file",
    b"\xd0\xcf\x11\xe0": "an old Excel or Word file",
    b"SQLite format 3\x00": "an SQLite database",
    b"\x7fELF": "a program",
    b"MZ": "a Windows program",
}


def describe_binary(sample: bytes) -> str | None:
    """What the sample is if it is clearly not text ("a PNG image", "binary data"), else None."""
    for magic, what in _BINARY_MAGIC.items():
        if sample.startswith(magic):
            return what
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or _utf16_without_bom(sample):
        return None
    head = sample[:8192]
    if not head:
        return None
    controls = sum(1 for byte in head if byte < 32 and byte not in _CONTROL_OK)
    return "binary data" if controls / len(head) > 0.05 else None


def _utf16_without_bom(sample: bytes) -> str | None:
    """utf-16-le or utf-16-be when the sample is mostly ASCII in UTF-16 (NUL in every other byte)."""
    head = sample[:4096]
    if len(head) < 4:
        return None
    even_nuls = head[0::2].count(0)
    odd_nuls = head[1::2].count(0)
    half = len(head) // 2
    if odd_nuls > 0.6 * half and even_nuls < 0.1 * half:
        return "utf-16-le"
    if even_nuls > 0.6 * half and odd_nuls < 0.1 * half:
        return "utf-16-be"
    return None


_HIGH_LETTERS = frozenset(range(0xC0, 0x100)) | {0xA8, 0xB8}  # А-я and Ёё in cp1251; À-ÿ in latin-1


def _cyrillic_share(sample: bytes) -> float:
    """The share of high letters standing in runs of three or more. Russian words in cp1251
    are runs of such bytes ("Иван"); accented letters in latin-1 stand between plain ASCII
    ones ("Jörg", "Größe")."""
    total = in_runs = run = 0
    for byte in sample + b" ":
        if byte in _HIGH_LETTERS:
            run += 1
            continue
        total += run
        if run >= 3:
            in_runs += run
        run = 0
    return in_runs / total if total else 0.0


def detect_encoding(sample: bytes) -> str:
    """The Python codec to read a file starting with this sample: utf-8-sig, utf-16(-le/-be),
    utf-8, cp1251, latin-1 or cp1252."""
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    utf16 = _utf16_without_bom(sample)
    if utf16:
        return utf16
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    if _cyrillic_share(sample) > 0.5:
        return "cp1251"
    if any(0x80 <= byte <= 0x9F for byte in sample):
        try:
            sample.decode("cp1252")
            return "cp1252"
        except UnicodeDecodeError:
            pass
    return "latin-1"


class _Utf8Transcoder:
    """A binary stream of UTF-16 read as UTF-8 bytes, so one line splitter serves every encoding."""

    def __init__(self, stream: IO[bytes], encoding: str, where: str) -> None:
        self.stream = stream
        self.decoder = codecs.getincrementaldecoder(encoding)()
        self.encoding = encoding
        self.where = where
        self.done = False

    def read(self, size: int) -> bytes:
        while not self.done:
            chunk = self.stream.read(size)
            try:
                text = self.decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError:
                raise ImportFailed(
                    f"{self.where} is not valid UTF-16 although it starts like UTF-16: save it again as CSV UTF-8"
                ) from None
            self.done = not chunk
            if text:
                return text.encode("utf-8", "surrogatepass")
        return b""


class Lines:
    """The decoded lines of a text stream (line ends kept, as the csv module wants them).

    `number` is the number of the line last yielded. `mark()` starts a new record: a CSV record
    may span lines (a quoted field with line breaks), and one record longer than `max_bytes`
    stops the import as a too-long line does.
    """

    def __init__(self, stream: IO[bytes], encoding: str, *, max_bytes: int, where: str,
                 chunk_size: int = 1 << 16) -> None:
        self.where = where
        self.max_bytes = max_bytes
        self.number = 0
        self._record_bytes = 0
        self._record_start = 1
        self._chunk_size = chunk_size
        self._strip_bom = encoding == "utf-8-sig"
        if encoding.startswith("utf-16"):
            self._stream: IO[bytes] | _Utf8Transcoder = _Utf8Transcoder(stream, encoding, where)
            self._codec = "utf-8"
        else:
            self._stream = stream
            self._codec = "utf-8" if encoding == "utf-8-sig" else encoding

    def mark(self) -> None:
        self._record_bytes = 0
        self._record_start = self.number + 1

    def __iter__(self) -> Iterator[str]:
        pending = b""
        while True:
            chunk = self._stream.read(self._chunk_size)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield self._decode(line + b"\n")
            if len(pending) > self.max_bytes:
                self._too_long(self.number + 1)
        if pending:
            yield self._decode(pending)

    def _too_long(self, number: int, what: str = "line") -> None:
        raise ImportFailed(
            f"{what} {number}{self.where_suffix} is longer than {self.max_bytes:,} bytes: a row of a recipient list "
            "is far shorter, so this is not a list file, or its line ends or a closing quote mark are missing; "
            "check the file"
        )

    @property
    def where_suffix(self) -> str:
        return f" of {self.where}" if self.where else ""

    def _decode(self, line: bytes) -> str:
        self.number += 1
        self._record_bytes += len(line)
        if len(line) > self.max_bytes:
            self._too_long(self.number)
        if self._record_bytes > self.max_bytes:
            self._too_long(self._record_start, "the row starting on line")
        if b"\0" in line:
            raise ImportFailed(
                f"line {self.number}{self.where_suffix} holds a NUL byte, which text files never do: "
                "the file is damaged or not a text file; remove the NUL bytes or export the list again"
            )
        if self._strip_bom and self.number == 1 and line.startswith(codecs.BOM_UTF8):
            line = line[len(codecs.BOM_UTF8):]
        try:
            return line.decode(self._codec)
        except UnicodeDecodeError:
            raise ImportFailed(
                f"line {self.number}{self.where_suffix} is not valid {_codec_label(self._codec)} like the lines "
                "before it: save the file as CSV UTF-8 and upload it again"
            ) from None


def _codec_label(codec: str) -> str:
    return {"utf-8": "UTF-8", "cp1251": "cp1251 (Cyrillic)"}.get(codec, codec)


def looks_like_address_line(line: str) -> bool:
    """A first line that is one e-mail address and nothing else: the file is plain text."""
    text = line.strip()
    return "@" in text and not any(char in text for char in DELIMITERS) and " " not in text and '"' not in text


def sniff_delimiter(sample_text: str) -> str:
    """The delimiter of a CSV file from its first lines: the one of , ; TAB | on the header line,
    or csv.Sniffer's pick among those there, or else the most frequent there."""
    lines = sample_text.splitlines()[:50]
    if len(lines) > 1 and not sample_text.endswith(("\n", "\r")):
        lines = lines[:-1]  # the sample may cut the last line short
    first = lines[0] if lines else ""
    on_header = [char for char in DELIMITERS if char in first]
    if len(on_header) == 1:
        return on_header[0]  # the header names columns: one kind of separator there decides
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters="".join(on_header) or DELIMITERS).delimiter
    except csv.Error:
        return max(DELIMITERS, key=first.count)
