"""The entries of a PhysioNet 2012 set: a folder ``set-x/`` or its ``.tar.gz``, read in one streaming pass.

A *stay entry* is one named ``<RecordID>.txt`` (digits only). Every entry is accounted for:

* a stay entry that is a regular file is a stay, and its bytes are returned (none if the file cannot be
  opened: no permission, an I/O error);
* a stay entry that is anything else — a symbolic link (folder or archive), an archive's hard link, a
  directory, a device, a FIFO — is a stay without content: :mod:`clinical_lstm.sources` rejects it as
  ``unreadable_file``. Links are never followed: a link's target may be another stay (its data scored twice,
  under two ids) or lie outside the set, and an archive read front to back cannot go back to a hard link's
  target. (A folder's hard link is a regular file like any other.) Re-pack such a set without links
  (``tar --dereference --hard-dereference``);
* any other entry is counted in ``RawData.ignored_members``, except the directories of an archive (their
  files are members themselves; a folder's sub-directories are counted: their files are not read).

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
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

STAY_FILE = re.compile(r"^(\d+)\.txt$")
NOT_A_FILE = b""  # the content of a stay entry that is a link or another non-regular file: no header, unreadable
_CHUNK = 1 << 16  # bytes per read of a decompressed stream
# what a damaged stream raises: tarfile, gzip (BadGzipFile is an OSError), zlib, bzip2 (OSError), xz
_DAMAGE = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


class DataError(ValueError):
    """Input data that cannot be read as documented; the message says what, where and the fix."""


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


def _iter_folder(path: Path, skip):
    position = -1
    for f in sorted(path.iterdir()):
        m = STAY_FILE.match(f.name)
        if not m:
            yield None, None
            continue
        position += 1
        if skip and skip(position):
            yield int(m.group(1)), None
        elif f.is_symlink() or not f.is_file():  # never read a link's target or a FIFO (it would block)
            yield int(m.group(1)), NOT_A_FILE
        else:
            try:
                data = f.read_bytes()
            except OSError:  # no permission, an I/O error: this one stay cannot be read
                data = NOT_A_FILE
            yield int(m.group(1)), data


class _StrictTarInfo(tarfile.TarInfo):
    """A header that cannot be read is damage. (``tarfile`` itself stops quietly at a bad or missing header
    after the first member, and the archive would look shorter than it is.) An all-zero block still ends the
    members; :func:`_check_end` then checks the rest of the archive."""

    @classmethod
    def fromtarfile(cls, tarfile_):
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.EOFHeaderError:
            raise
        except tarfile.HeaderError as exc:  # bad checksum or fields, truncated or absent header
            raise tarfile.ReadError(f"{exc} at byte {tarfile_.offset} of the tar") from None


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
    read = 0  # stay files read completely
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise DataError(f"{path} cannot be opened ({exc}); check the path and its permissions") from None
    with raw:
        try:
            # members are read in order (the decompressor only ever seeks forward), one at a time
            tf = tarfile.open(fileobj=_decompressed(raw), mode="r:", tarinfo=_StrictTarInfo)
        except _DAMAGE as exc:
            raise DataError(f"{path} is not a readable tar archive ({_why(exc)}); pass a PhysioNet set folder, "
                            f"its .tar.gz, or a long-format .csv/.parquet") from None
        pending = 0  # a skipped stay file counts as read once the stream has passed its data
        try:
            for member in tf:
                read, pending = read + pending, 0
                m = STAY_FILE.match(PurePosixPath(member.name).name)
                if not m:
                    if not member.isdir():
                        yield None, None
                    continue
                if skip and skip(read):
                    data, pending = None, 1
                elif not member.isfile():  # hard or symbolic link, directory, device, FIFO
                    data, read = NOT_A_FILE, read + 1
                else:
                    data, read = tf.extractfile(member).read(), read + 1
                yield int(m.group(1)), data
            read, pending = read + pending, 0
            _check_end(tf)
        except _DAMAGE as exc:
            if pending and tf.fileobj.tell() >= tf.offset:  # the skipped file was whole; the header after it not
                read += 1
            raise DataError(f"{path}: the archive is damaged after {read} stay files were read "
                            f"({_why(exc)}); nothing from it was used: re-download or re-export it") from None


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
