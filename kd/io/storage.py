"""Where a shard set lives: a local directory, or any URI pyarrow's filesystem layer reads.

    kd shards copy data/soft_targets s3://team-bucket/kd/soft_targets    # upload, manifest last
    kd student --shards s3://team-bucket/kd/soft_targets                 # every node streams it
    kd shards verify "s3://bucket/kd/soft_targets?endpoint_override=127.0.0.1:9000&scheme=http"

Credentials come from the usual AWS variables and files. An S3-compatible server (MinIO, a
local test server) is named by `endpoint_override` in the URI or by `AWS_ENDPOINT_URL_S3` /
`AWS_ENDPOINT_URL`, as boto3 and DVC read them. Messages name a file by its full URI.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from kd.errors import ArtifactError


def is_uri(location: str | os.PathLike) -> bool:
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


@dataclass(frozen=True)
class Location:
    """A directory on a pyarrow filesystem, with the name users know it by."""

    fs: pafs.FileSystem
    base: str  # the directory as `fs` knows it
    name: str  # as the user wrote it, query and user:password dropped (no secrets in messages)

    def path(self, file: str) -> str:
        return f"{self.base.rstrip('/')}/{file}"

    def show(self, file: str | None = None) -> str:
        return self.name if file is None else f"{self.name.rstrip('/')}/{file}"

    def read_bytes(self, file: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(file)) as f:
                return f.read()
        except FileNotFoundError:
            raise ArtifactError(f"{self.show(file)}: file not found") from None
        except (OSError, pa.ArrowException) as e:
            raise ArtifactError(f"{self.show(file)}: unreadable ({_first_line(e)})") from None

    def open(self, file: str) -> pa.NativeFile:
        """A random-access file, for Parquet footers and row groups."""
        try:
            return self.fs.open_input_file(self.path(file))
        except FileNotFoundError:
            raise ArtifactError(f"{self.show(file)}: file not found") from None
        except (OSError, pa.ArrowException) as e:
            raise ArtifactError(f"{self.show(file)}: unreadable ({_first_line(e)})") from None

    def size(self, file: str) -> int | None:
        """Bytes in `file`, or None when it is not there."""
        info = self.fs.get_file_info(self.path(file))
        return info.size if info.type == pafs.FileType.File else None

    def exists(self) -> bool:
        """Whether the directory is there (on an object store: whether any key is under it)."""
        try:
            return self.fs.get_file_info(self.base).type != pafs.FileType.NotFound
        except (OSError, pa.ArrowException) as e:
            raise ArtifactError(f"{self.show()}: cannot read ({_first_line(e)})") from None

    def delete(self, file: str) -> None:
        """Remove `file` if it is there."""
        if self.size(file) is None:
            return
        try:
            self.fs.delete_file(self.path(file))
        except (OSError, pa.ArrowException) as e:
            raise ArtifactError(f"{self.show(file)}: cannot delete ({_first_line(e)})") from None

    def glob(self, pattern: str) -> list[str]:
        """Names of the files directly in this directory that match `pattern`."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True))
        except (OSError, pa.ArrowException) as e:
            raise ArtifactError(f"{self.show()}: cannot list ({_first_line(e)})") from None
        return sorted(i.base_name for i in infos
                      if i.type == pafs.FileType.File and fnmatch.fnmatch(i.base_name, pattern))


def locate(location: str | os.PathLike) -> Location:
    """A local path or a URI (`s3://bucket/prefix`, `gs://...`, `hdfs://...`) -> Location."""
    if not is_uri(location):
        path = Path(os.path.realpath(str(location).removeprefix("file://")))  # one spelling
        return Location(pafs.LocalFileSystem(), path.as_posix(), str(location))
    uri = str(location)
    parts = urlsplit(uri)
    # as the user wrote it, less what may hold secrets: the query and any user:password@
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2], query="",
                           fragment="").geturl()
    if parts.scheme == "s3" and "endpoint_override" not in dict(parse_qsl(parts.query)):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:  # pyarrow does not read these itself; boto3 and DVC do
            e = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
            extra = f"endpoint_override={e.netloc}&scheme={e.scheme or 'https'}"
            uri = parts._replace(query="&".join(filter(None, [parts.query, extra]))).geturl()
    try:
        fs, base = pafs.FileSystem.from_uri(uri)
    except (OSError, pa.ArrowException, ValueError) as e:
        raise ArtifactError(f"{shown}: not a location pyarrow reads ({_first_line(e)})") from None
    return Location(fs, base, shown)


def copy_files(src: Location, dst: Location, files: list[str]) -> None:
    """Copy `files` from src to dst, in the order given (callers put the manifest last)."""
    if isinstance(dst.fs, pafs.LocalFileSystem):  # object stores have no directories to make
        try:
            dst.fs.create_dir(dst.base, recursive=True)
        except OSError as e:
            raise ArtifactError(f"{dst.show()}: cannot create ({_first_line(e)})") from None
    for f in files:
        try:
            pafs.copy_files(src.path(f), dst.path(f), source_filesystem=src.fs,
                            destination_filesystem=dst.fs)
        except (OSError, pa.ArrowException) as e:
            raise ArtifactError(f"{dst.show(f)}: copy failed ({_first_line(e)})") from None


def file_sha256(path: Path | Location, file: str | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") if file is None else path.open(file) as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
