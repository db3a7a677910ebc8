"""The entries of a PhysioNet 2012 set: a folder ``set-x/`` or its ``.tar.gz``, read in one streaming pass.

A *stay entry* is one named ``<RecordID>.txt`` (digits only). Every entry is accounted for:

* a stay entry that is a regular file is a stay, and its bytes are returned (none if the file cannot be
  opened: no permission, an I/O error);
* a stay entry that is anything else — a symbolic link (folder or archive), an archive's hard link, a
  directory, a device, a FIFO — is a stay without content: :mod:`clinical_lstm.data.sources` rejects it as
  ``unreadable_file``. Links are never followed: a link's target may be another stay (its data scored twice,
  under two ids) or lie outside the set, and an archive read front to back cannot go back to a hard link's
  target. (A folder's hard link is a regular file like any other.) Re-pack such a set without links
  (``tar --dereference --hard-dereference``);
* any other entry is counted in ``RawData.ignored_members``, except directories.

A folder and its archive hold the same entries: stay files are found **at any depth** (``set-a/old/1.txt`` is
a stay of ``set-a``, in a folder as in a ``.tar.gz``), in the order ``tar`` packs a folder (names sorted at each
level, a directory's entries right after it); a directory is never counted, and a link to one is not followed
(an entry like any other link). Two stay files with one RecordID are refused by the readers.

**Size limits.** An archive is read as a stream, each member in pieces of 64 KiB, never whole: a small
``.tar.gz`` can inflate a thousand-fold. A stay file is kilobytes, so

* a stay file (folder or archive), and an archive's long-name or pax header, may hold at most
  :data:`MAX_MEMBER_BYTES` (64 MiB; environment variable ``CLINICAL_LSTM_MAX_MEMBER_BYTES``);
* an archive may inflate to at most :data:`MAX_ARCHIVE_BYTES` (4 GiB of tar, every member and padding counted;
  ``CLINICAL_LSTM_MAX_ARCHIVE_BYTES``), some hundred times a PhysioNet set;

both in bytes, read when a set is opened. Beyond either the set is refused with a :class:`DataError` naming the
set, the member and the limit, before the member is read; nothing from the set is used. Sparse members (a stay
file is never sparse; their maps inflate without bound) are refused too.

An archive must read to its end: gzip, bzip2 and xz streams are decompressed to their last byte so that
their checksums (and gzip's length) are verified, every tar header must be valid, and the tar must close with
its end-of-archive marker (two zero blocks) followed by nothing but zero padding. Anything else — a flipped
byte, a truncation, garbage that decompresses into a tar header, a missing end — is a :class:`DataError`
naming the archive and how many stay files were read before the damage was found: a stay missing without a
trace cannot be told from one that was never there. ``read_physionet`` returns nothing of a damaged archive,
and the batch scorer's index pass reads the whole archive this way before any chunk is scored.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from ..checks import DataError

STAY_FILE = re.compile(r"^(\d+)\.txt$")
NOT_A_FILE = b""  # the content of a stay entry that is a link or another non-regular file: no header, unreadable
_CHUNK = 1 << 16  # bytes per read of a decompressed stream
# what a damaged stream raises: tarfile, gzip (BadGzipFile is an OSError), zlib, bzip2 (OSError), xz
_DAMAGE = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)
MAX_MEMBER_BYTES = 64 << 20  # a stay file (or an archive's header) at most; CLINICAL_LSTM_MAX_MEMBER_BYTES
MAX_ARCHIVE_BYTES = 4 << 30  # an archive's tar stream at most; CLINICAL_LSTM_MAX_ARCHIVE_BYTES
MEMBER_LIMIT_VAR, ARCHIVE_LIMIT_VAR = "CLINICAL_LSTM_MAX_MEMBER_BYTES", "CLINICAL_LSTM_MAX_ARCHIVE_BYTES"


def size_limits() -> tuple[int, int]:
    """``(per member, per archive)`` in bytes: :data:`MAX_MEMBER_BYTES` and :data:`MAX_ARCHIVE_BYTES`, or the
    environment variables that override them. A value that is not a whole number of at least 1 is refused."""
    return _limit(MEMBER_LIMIT_VAR, MAX_MEMBER_BYTES), _limit(ARCHIVE_LIMIT_VAR, MAX_ARCHIVE_BYTES)


def _limit(name: str, default: int) -> int:
    given = os.environ.get(name, "").strip()
    if not given:
        return default
    try:
        value = int(given)
    except ValueError:
        value = 0
    if value < 1:
        raise DataError(f"{name} must be a whole number of bytes of at least 1, got {os.environ[name]!r}; "
                        f"unset it for the default {default:,}")
    return value


class _Refused(Exception):
    """A limit crossed inside ``tarfile``'s own reading; :func:`_iter_archive` names the archive."""


def _over_member_limit(name: str, size: int, limit: int, verb: str = "inflates to") -> str:
    return (f"member {name} {verb} {size:,} bytes, over the limit of {limit:,} bytes per stay file "
            f"({MEMBER_LIMIT_VAR}); a stay file is kilobytes: check where the set came from, or raise the limit")


def _over_archive_limit(where: str, limit: int) -> str:
    return (f"the archive inflates past the limit of {limit:,} bytes per archive ({ARCHIVE_LIMIT_VAR}) {where}; "
            f"check where it came from, or raise the limit")


def iter_stay_files(path: Path, skip: Callable[[int], bool] | None = None) -> Iterator[tuple[int | None, bytes | None]]:
    """Yield ``(record_id, bytes)`` for every stay entry of a set folder or archive, in folder name order /
    archive order; ``(None, None)`` for each ignored entry (see the module docstring).

    A stay entry that is not a regular file yields :data:`NOT_A_FILE`. ``skip(position)`` -> True yields
    ``(record_id, None)`` without reading the file (the position counts stay entries only): batch scoring
    resumes an archive without parsing finished chunks again. An archive's checks run even so.
    """
    if path.is_dir():
        yield from _iter_folder(path, skip)
    else:
        yield from _iter_archive(path, skip)


def folder_entries(path: Path) -> Iterator[Path]:
    """Every entry under the folder ``path``, at any depth, in the order ``tar`` packs it (names sorted at each
    level, a directory's entries right after it). Links are listed, never followed."""
    stack = [iter(_listing(path, path))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        yield entry
        if entry.is_dir() and not entry.is_symlink():
            stack.append(iter(_listing(entry, path)))


def _listing(folder: Path, top: Path) -> list[Path]:
    try:
        return sorted((folder / name for name in os.listdir(folder)), key=lambda p: p.name)
    except OSError as exc:
        raise DataError(f"{top}: the folder {folder} cannot be listed ({exc.strerror or exc}); check its "
                        f"permissions") from None


def _iter_folder(path: Path, skip):
    member_limit, _ = size_limits()
    position = -1
    for f in folder_entries(path):
        m = STAY_FILE.match(f.name)
        if not m:
            if f.is_symlink() or not f.is_dir():
                yield None, None
            continue
        position += 1
        regular = not f.is_symlink() and f.is_file()  # never read a link's target or a FIFO (it would block)
        if regular and (size := f.stat().st_size) > member_limit:  # checked before skip: the index pass refuses
            name = f.relative_to(path).as_posix()
            raise DataError(f"{path}: {_over_member_limit(name, size, member_limit, 'is')}")
        if skip and skip(position):
            yield int(m.group(1)), None
        elif not regular:
            yield int(m.group(1)), NOT_A_FILE
        else:
            try:
                with f.open("rb") as fh:
                    data = fh.read(member_limit + 1)
            except OSError:  # no permission, an I/O error: this one stay cannot be read
                data = NOT_A_FILE
            if len(data) > member_limit:  # it grew since it was looked at
                name = f.relative_to(path).as_posix()
                raise DataError(f"{path}: {_over_member_limit(name, len(data), member_limit, 'is at least')}")
            yield int(m.group(1)), data


class _StrictTarInfo(tarfile.TarInfo):
    """A header that cannot be read is damage. (``tarfile`` itself stops quietly at a bad or missing header
    after the first member, and the archive would look shorter than it is.) An all-zero block still ends the
    members; :func:`_check_end` then checks the rest of the archive.

    ``tarfile`` reads a long-name or pax header whole, and a sparse member's map without bound, before it
    returns the member: a header over the member limit, and any sparse member, is refused before that."""

    @classmethod
    def fromtarfile(cls, tarfile_):
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.EOFHeaderError:
            raise
        except tarfile.HeaderError as exc:  # bad checksum or fields, truncated or absent header
            raise tarfile.ReadError(f"{exc} at byte {tarfile_.offset} of the tar") from None

    def _proc_member(self, tarfile_):
        if self.type in _HEADER_TYPES and self.size > tarfile_.fileobj.member_limit:
            limit = tarfile_.fileobj.member_limit
            raise _Refused(_over_member_limit(f"{self.name} (a long-name or pax header)", self.size, limit))
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _Refused(_sparse(self.name))
        return super()._proc_member(tarfile_)

    def _proc_gnusparse_00(self, next_, *_):  # the pax forms of a sparse member
        raise _Refused(_sparse(next_.name))

    _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00


_HEADER_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                 tarfile.SOLARIS_XHDTYPE)


def _sparse(name: str) -> str:
    return (f"member {name} is a sparse file, which a stay file never is; re-pack the set without sparse files "
            f"(tar --no-sparse)")


class _Bounded:
    """The decompressed tar stream, which refuses to go past ``limit`` bytes (by a read or a forward seek): the
    per-archive limit on what ``tarfile`` reads by itself (headers, the members it skips, the end padding).
    It carries the per-member limit for :class:`_StrictTarInfo`."""

    def __init__(self, stream, member_limit: int, limit: int):
        self.stream, self.member_limit, self.limit = stream, member_limit, limit

    def read(self, size: int | None = -1) -> bytes:
        room = self.limit - self.stream.tell()
        if size is None or size < 0 or size > room:
            data = self.stream.read(max(room, 0) + 1)  # one byte past the limit tells whether the stream goes on
            if len(data) > room:
                raise _Refused(_over_archive_limit(f"at byte {self.limit:,} of the tar", self.limit))
            return data
        return self.stream.read(size)

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET and pos > self.limit:
            raise _Refused(_over_archive_limit(f"at byte {self.limit:,} of the tar", self.limit))
        return self.stream.seek(pos, whence)

    def tell(self) -> int:
        return self.stream.tell()


def _decompressed(raw):
    """The decompressing reader for the archive file ``raw`` (gzip, bzip2, xz by their magic bytes; else tar)."""
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw)
    return raw


def _iter_archive(path: Path, skip):
    member_limit, archive_limit = size_limits()
    read = 0  # stay files read completely
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise DataError(f"{path} cannot be opened ({exc}); check the path and its permissions") from None
    with raw:
        try:
            # members are read in order (the decompressor only ever seeks forward), one at a time
            tf = tarfile.open(fileobj=_Bounded(_decompressed(raw), member_limit, archive_limit), mode="r:",
                              tarinfo=_StrictTarInfo)
        except _Refused as exc:
            raise DataError(f"{path}: {exc}") from None
        except _DAMAGE as exc:
            raise DataError(f"{path} is not a readable tar archive ({_why(exc)}); pass a PhysioNet set folder, "
                            f"its .tar.gz, or a long-format .csv/.parquet") from None
        pending = 0  # a skipped stay file counts as read once the stream has passed its data
        try:
            for member in tf:
                read, pending = read + pending, 0
                m = STAY_FILE.match(PurePosixPath(member.name).name)
                # both limits are checked before the member's data is read or skipped, the stay's also when skipped
                if m and member.isfile() and member.size > member_limit:
                    raise DataError(f"{path}: {_over_member_limit(member.name, member.size, member_limit)}")
                if member.offset_data + member.size > archive_limit:
                    raise DataError(f"{path}: {_over_archive_limit(f'at member {member.name}', archive_limit)}")
                if not m:
                    if not member.isdir():
                        yield None, None
                    continue
                if skip and skip(read):
                    data, pending = None, 1
                elif not member.isfile():  # hard or symbolic link, directory, device, FIFO
                    data, read = NOT_A_FILE, read + 1
                else:
                    data, read = _read_member(tf, member, path, member_limit), read + 1
                yield int(m.group(1)), data
            read, pending = read + pending, 0
            _check_end(tf)
        except _Refused as exc:
            raise DataError(f"{path}: {exc}") from None
        except _DAMAGE as exc:
            if pending and tf.fileobj.tell() >= tf.offset:  # the skipped file was whole; the header after it not
                read += 1
            raise DataError(f"{path}: the archive is damaged after {read} stay files were read "
                            f"({_why(exc)}); nothing from it was used: re-download or re-export it") from None


def _read_member(tf: tarfile.TarFile, member: tarfile.TarInfo, path: Path, limit: int) -> bytes:
    """A stay file's bytes, read in pieces and never past ``limit`` (its header's size was checked already)."""
    f = tf.extractfile(member)
    pieces, size = [], 0
    while piece := f.read(_CHUNK):
        size += len(piece)
        if size > limit:
            raise DataError(f"{path}: {_over_member_limit(member.name, size, limit, 'inflates to at least')}")
        pieces.append(piece)
    return b"".join(pieces)


def _check_end(tf: tarfile.TarFile) -> None:
    """After the members: the second zero block of the end-of-archive marker, then only zeros to the end of the
    stream. Reading to the end makes the decompressor verify its checksum and length."""
    stream = tf.fileobj  # the decompressed stream, just past the first zero block
    seen = 0
    while block := stream.read(_CHUNK):
        if block.count(0) != len(block):
            raise tarfile.ReadError(f"data after the end-of-archive marker at byte {tf.offset} of the tar")
        seen += len(block)
    if seen < tarfile.BLOCKSIZE:
        raise tarfile.ReadError("the tar's end-of-archive marker is incomplete")


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
