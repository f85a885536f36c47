"""The files inside an upload: the upload itself, or the members of a ZIP or RAR archive.

The kind is told by content (magic bytes), never by the name. Archive members are streamed
straight from the archive (ZIP through zipfile, RAR through rarfile, which reads stored
members itself and pipes compressed ones through `unar`): nothing is extracted to disk.

Before a byte is read, the archive's directory is checked and refused as a whole, with a
message saying which member and why, when it holds: more members than the limit; a name
pointing outside the archive (`../x`, `/etc/x`, `C:\\x`); an encrypted member; another
archive; a member whose declared size over its compressed size is above the ratio limit;
declared sizes adding up to more than the total limit. While reading, the bytes actually
unpacked are counted against the same limits, so an archive whose headers lie stops too.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping

import rarfile

from .errors import ImportFailed

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive's end record
RAR_MAGIC = (b"Rar!\x1a\x07\x00", b"Rar!\x1a\x07\x01\x00")  # RAR 1.5-4.x, RAR 5
ARCHIVE_SUFFIXES = (".zip", ".rar", ".7z", ".gz", ".tgz", ".tar", ".bz2", ".xz", ".zst", ".cab", ".arj")
RATIO_APPLIES_FROM = 1 << 20  # small members may compress very well without being a bomb
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ImportLimits:
    """Bounds on what one import reads; the panel's IMPORT_* settings, documented in the README."""

    max_upload: int = 256 << 20  # bytes of one uploaded file (IMPORT_MAX_UPLOAD)
    # bytes one user's imports keep on disk at once: uploads not yet imported and reports of
    # rejected rows (IMPORT_MAX_STORED); reports are deleted after report_days (IMPORT_REPORT_DAYS)
    max_stored: int = 1 << 30
    report_days: int = 30
    max_uncompressed: int = 4 << 30  # bytes unpacked from one archive, all members (IMPORT_MAX_UNCOMPRESSED)
    max_ratio: int = 100  # unpacked size / packed size of one archive member (IMPORT_MAX_RATIO)
    max_members: int = 100  # files in one archive (IMPORT_MAX_MEMBERS)
    max_line: int = 1 << 20  # bytes of one line or CSV record (IMPORT_MAX_LINE)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ImportLimits:
        defaults = cls()
        return cls(**{
            name: int(config.get(f"IMPORT_{name.upper()}", getattr(defaults, name)))
            for name in ("max_upload", "max_uncompressed", "max_ratio", "max_members", "max_line", "max_stored",
                         "report_days")
        })


def archive_kind(head: bytes) -> str | None:
    """"ZIP" or "RAR" when the bytes start like one, else None."""
    if head.startswith(ZIP_MAGIC):
        return "ZIP"
    if head.startswith(RAR_MAGIC):
        return "RAR"
    return None


@dataclass
class Member:
    """One file to import: a name to show in messages ("" for the upload itself), its declared
    size (for progress) and how to open it as a binary stream."""

    name: str
    size: int
    open: Callable[[], IO[bytes]]


class Progress:
    """Bytes read so far out of the total expected; `on_change` hears about every chunk."""

    def __init__(self, total: int, on_change: Callable[[int, int], None] | None = None) -> None:
        self.total = total
        self.done = 0
        self.on_change = on_change

    def add(self, count: int) -> None:
        self.done += count
        if self.on_change is not None:
            self.on_change(self.done, self.total)


class _CountingReader:
    """Counts what a member's stream yields against the progress and, for archives, the limits."""

    def __init__(self, stream: IO[bytes], progress: Progress, check: Callable[[int], None] | None) -> None:
        self.stream = stream
        self.progress = progress
        self.check = check
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.read_bytes += len(data)
        if self.check is not None:
            self.check(len(data))
        self.progress.add(len(data))
        return data

    def close(self) -> None:
        self.stream.close()


def _bad_name(name: str) -> bool:
    parts = re.split(r"[\\/]+", name)
    return name.startswith(("/", "\\")) or bool(_DRIVE.match(name)) or ".." in parts


class _ArchiveGuard:
    """Checks an archive's directory and counts what is unpacked against the limits."""

    def __init__(self, kind: str, upload_name: str, limits: ImportLimits) -> None:
        self.kind = kind
        self.upload_name = upload_name
        self.limits = limits
        self.unpacked = 0

    def fail(self, message: str) -> ImportFailed:
        return ImportFailed(f"the {self.kind} archive {self.upload_name} {message}")

    def check_directory(self, entries: list[tuple[str, int, int, bool]]) -> None:
        """entries: (name, unpacked size, packed size, encrypted) of every file member."""
        if not entries:
            raise self.fail("holds no files: put the CSV or text files of the list into it")
        if len(entries) > self.limits.max_members:
            raise self.fail(
                f"holds {len(entries)} files, more than the {self.limits.max_members} one import takes: "
                "split it into smaller archives"
            )
        total = 0
        for name, size, packed, encrypted in entries:
            if _bad_name(name):
                raise self.fail(
                    f"holds a file named {name!r}, which points outside the archive: such archives are refused "
                    "as a whole (nothing was unpacked); make the archive again from the list files alone"
                )
            if encrypted:
                raise self.fail(
                    f"is protected by a password ({name!r} is encrypted): the panel cannot unlock it; "
                    "make the archive again without a password"
                )
            if name.lower().endswith(ARCHIVE_SUFFIXES):
                raise self.nested(name)
            if size > RATIO_APPLIES_FROM and size > packed * self.limits.max_ratio:
                raise self.fail(
                    f"holds {name!r}, which would unpack to {size:,} bytes from {packed:,} "
                    f"(more than {self.limits.max_ratio} times its packed size): that is how archive bombs look, "
                    "so it was not unpacked; upload the CSV file itself"
                )
            total += size
        if total > self.limits.max_uncompressed:
            raise self.fail(
                f"would unpack to {total:,} bytes, more than the limit of {self.limits.max_uncompressed:,}: "
                "split the list into smaller files"
            )

    def nested(self, name: str) -> ImportFailed:
        return self.fail(
            f"holds another archive ({name!r}): archives inside archives are not unpacked; "
            "unpack that one and upload its files, or put the list files into one archive"
        )

    def counter(self, name: str, packed: int) -> Callable[[int], None]:
        read = 0

        def check(count: int) -> None:
            nonlocal read
            read += count
            self.unpacked += count
            if self.unpacked > self.limits.max_uncompressed:
                raise self.fail(f"unpacks to more than the limit of {self.limits.max_uncompressed:,} bytes")
            if read > RATIO_APPLIES_FROM and read > max(packed, 1) * self.limits.max_ratio:
                raise self.fail(
                    f"holds {name!r}, which unpacks to more than {self.limits.max_ratio} times its packed size: "
                    "that is how archive bombs look, so the import stopped; upload the CSV file itself"
                )

        return check


def _skipped(name: str) -> bool:
    """Files archivers add on their own: macOS resource forks and Finder data."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return name.startswith("__MACOSX/") or base.startswith("._") or base in (".DS_Store", "Thumbs.db")


@contextmanager
def open_members(path: Path, upload_name: str, limits: ImportLimits,
                 on_progress: Callable[[int, int], None] | None = None) -> Iterator[tuple[str | None, list[Member]]]:
    """(archive kind or None, the files to import) of the upload at `path`; their streams count
    towards one Progress. Whole-upload problems raise ImportFailed."""
    with open(path, "rb") as probe:
        head = probe.read(16)
    kind = archive_kind(head)
    if kind is None:
        size = path.stat().st_size
        progress = Progress(size, on_progress)
        yield None, [Member("", size, lambda: _CountingReader(open(path, "rb"), progress, None))]  # noqa: SIM115
        return
    guard = _ArchiveGuard(kind, upload_name, limits)
    if kind == "ZIP":
        with _zip_members(path, guard, on_progress) as members:
            yield kind, members
    else:
        with _rar_members(path, guard, on_progress) as members:
            yield kind, members


@contextmanager
def _zip_members(path: Path, guard: _ArchiveGuard, on_progress) -> Iterator[list[Member]]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise guard.fail(f"is damaged and cannot be read ({exc}): make it again or upload the CSV file itself") from None
    with archive:
        names = set(archive.namelist())
        if "[Content_Types].xml" in names or "mimetype" in names:
            raise ImportFailed(
                f"{guard.upload_name} is a spreadsheet (Excel or OpenDocument), not a CSV file or an archive of them: "
                "save it from the spreadsheet program as “CSV UTF-8” and upload that"
            )
        infos = [info for info in archive.infolist() if not info.is_dir() and not _skipped(info.filename)]
        guard.check_directory([(i.filename, i.file_size, i.compress_size, bool(i.flag_bits & 0x1)) for i in infos])
        progress = Progress(sum(info.file_size for info in infos), on_progress)

        def opener(info: zipfile.ZipInfo) -> Callable[[], IO[bytes]]:
            def open_one() -> IO[bytes]:
                try:
                    stream = archive.open(info)
                except NotImplementedError as exc:
                    raise guard.fail(f"packs {info.filename!r} in a way the panel cannot unpack ({exc}): "
                                     "make the archive again with ordinary ZIP compression (deflate)") from None
                return _CountingReader(_damage_as_failure(stream, guard, info.filename), progress,
                                       guard.counter(info.filename, info.compress_size))
            return open_one

        yield [Member(info.filename, info.file_size, opener(info)) for info in infos]


@contextmanager
def _rar_members(path: Path, guard: _ArchiveGuard, on_progress) -> Iterator[list[Member]]:
    try:
        archive = rarfile.RarFile(path)
    except rarfile.NeedFirstVolume:
        raise guard.fail("is one part of a multi-part archive: make one archive of the list files and upload it") from None
    except rarfile.PasswordRequired:
        raise guard.fail(_PASSWORD_MESSAGE) from None
    except (rarfile.Error, OSError, EOFError) as exc:
        raise guard.fail(f"is damaged and cannot be read ({exc}): make it again or upload the CSV file itself") from None
    with archive:
        if archive.needs_password() and not archive.infolist():
            raise guard.fail(_PASSWORD_MESSAGE)  # the file names themselves are encrypted
        if archive.volumelist() and len(archive.volumelist()) > 1:
            raise guard.fail("is a multi-part archive: make one archive of the list files and upload it")
        infos = [info for info in archive.infolist() if not info.is_dir() and not _skipped(info.filename)]
        guard.check_directory([(i.filename, i.file_size, i.compress_size, i.needs_password()) for i in infos])
        progress = Progress(sum(info.file_size for info in infos), on_progress)

        def opener(info: rarfile.RarInfo) -> Callable[[], IO[bytes]]:
            def open_one() -> IO[bytes]:
                try:
                    stream = archive.open(info)
                except rarfile.RarCannotExec:
                    raise ImportFailed("the panel cannot unpack compressed RAR archives because the program unar "
                                       "is not installed: ask the administrator to run scripts/install-system-deps.sh"
                                       ) from None
                except (rarfile.Error, OSError) as exc:
                    raise guard.fail(f"is damaged and cannot be read ({exc}): make it again") from None
                return _CountingReader(_damage_as_failure(stream, guard, info.filename), progress,
                                       guard.counter(info.filename, info.compress_size))
            return open_one

        yield [Member(info.filename, info.file_size, opener(info)) for info in infos]


_PASSWORD_MESSAGE = ("is protected by a password: the panel cannot unlock it; "
                     "make the archive again without a password")


class _damage_as_failure:  # noqa: N801 (used like a function)
    """A member stream whose read errors (bad CRC, truncated data, unar failing) become ImportFailed."""

    def __init__(self, stream: IO[bytes], guard: _ArchiveGuard, name: str) -> None:
        self.stream = stream
        self.guard = guard
        self.name = name

    def read(self, size: int = -1) -> bytes:
        try:
            return self.stream.read(size)
        except (zipfile.BadZipFile, zlib.error, EOFError, rarfile.Error, OSError) as exc:
            raise self.guard.fail(
                f"is damaged: {self.name!r} cannot be unpacked ({exc}); make the archive again"
            ) from None

    def close(self) -> None:
        self.stream.close()
