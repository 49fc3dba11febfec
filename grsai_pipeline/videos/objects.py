"""The store of archived videos: any fsspec URL (a local folder by default, ``s3://`` through
s3fs in production), one object per task, named by its batch and task ids.

An object appears under its final name whole or not at all: it is written under a temporary
name next to it and moved into place once complete (a rename on a local disk; on an object
store, the move happens only after the upload finished). A kill mid-write leaves at most a
``.partial-*`` object, which the next copy of that video removes.

An archived video is read back (:func:`open_archived`, for ``GET /v1/videos/{task_id}``) from
the URL recorded on its row, whatever ``GRSAI_ARCHIVE_URL`` says now, a chunk at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem

from grsai_pipeline.errors import SettingsError

PARTIAL = ".partial-"
SUFFIX = ".mp4"
# What one read of an archived video holds in memory (s3fs reads it as one ranged GET).
READ_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class StoredVideo:
    url: str
    size: int
    sha256: str


class VideoStore:
    """Where archived videos go: ``url`` is ``GRSAI_ARCHIVE_URL``."""

    def __init__(self, url: str) -> None:
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise SettingsError(
                f"invalid setting GRSAI_ARCHIVE_URL: {exc}", "GRSAI_ARCHIVE_URL"
            ) from None
        self.url = url
        self.root = root.rstrip("/")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path_of(self, batch_id: str, task_id: str) -> str:
        return f"{self.root}/{batch_id}/{task_id}{SUFFIX}"

    def url_of(self, path: str) -> str:
        """The object's address as a person or another fsspec client uses it."""
        return str(self.fs.unstrip_protocol(path))

    def put(self, batch_id: str, task_id: str, chunks: Iterable[bytes]) -> StoredVideo:
        """Write the chunks as the task's video, counting and hashing them on the way."""
        final = self.path_of(batch_id, task_id)
        self._remove_partials(final)
        if self.is_local:
            self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        temporary = f"{final}{PARTIAL}{uuid.uuid4().hex}"
        digest, size = hashlib.sha256(), 0
        try:
            with self.fs.open(temporary, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            self.fs.mv(temporary, final)
        except BaseException:
            self._remove(temporary)
            raise
        return StoredVideo(self.url_of(final), size, digest.hexdigest())

    def _remove_partials(self, final: str) -> None:
        for path in self.fs.glob(f"{final}{PARTIAL}*"):
            self._remove(str(path))

    def _remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path)


def open_archived(url: str) -> tuple[int, Iterator[bytes]]:
    """The size of the archived video at ``url`` and its bytes as chunks, read as they are
    consumed (never whole in memory); FileNotFoundError when the object is gone."""
    fs, path = fsspec.core.url_to_fs(url)
    size = int(fs.size(path))
    return size, _chunks(fs, path)


def _chunks(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[bytes]:
    # No read-ahead cache: s3fs would otherwise fetch blocks of 50 MiB.
    with fs.open(path, "rb", block_size=READ_CHUNK_BYTES, cache_type="none") as source:
        while chunk := source.read(READ_CHUNK_BYTES):
            yield chunk
