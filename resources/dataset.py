"""The dataset the project trains on: its spec and the files in its landing zone.

The landing zone is a local folder by default (`DatasetResource`) or an S3 prefix through
dagster-aws (`S3DatasetResource`). Both list batch files and late label files the same way
and hand the assets a local path to read.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import dagster as dg

from unified_assets.ml.dataset_spec import DatasetSpec, DatasetSpecError, load_spec, payments_spec

_SIMPLE_STEM = re.compile(r"[A-Za-z0-9_=-]{1,100}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_=-]+")
_READABLE_CHARS = 60
_HASH_CHARS = 12


def batch_key(name: str, extension: str = ".parquet") -> str:
    """Partition key for a landed file name, one per exact name (a batch and its labels file
    share it). `stem<extension>` with a plain stem keeps `stem`, as keys always were; any
    other name gets its readable stem plus `.` and a hash of the exact name, so names that
    differ only in what sanitizing drops (`batch.v1`/`batch.v2`, `my batch`/`my_batch`,
    `bätch`/`b_tch`) never share a partition. Plain keys have no `.`, hashed keys exactly
    one; both are valid Dagster keys and safe in store paths and comma-joined tags."""
    stem = name[: -len(extension)] if extension and name.endswith(extension) else name
    if stem != name and _SIMPLE_STEM.fullmatch(stem):
        return stem
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    readable = _UNSAFE.sub("_", ascii_stem).strip("_")[:_READABLE_CHARS] or "file"
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    return f"{readable}.{digest}"


def is_complete(name: str) -> bool:
    """Hidden and `.partial` files are still being written; they are renamed into place."""
    return not name.startswith(".") and not name.endswith(".partial")


@dataclass(frozen=True)
class LandedFile:
    """One file in the landing zone; `version` changes when the file is replaced."""

    key: str
    uri: str
    version: str


class DatasetResource(dg.ConfigurableResource):
    """Which data: a dataset spec file (bring your own) or the built-in payments domain,
    landed in a local folder."""

    spec_path: str | None = None
    landing_dir: str = ".unified_ai/landing"

    @cached_property
    def spec(self) -> DatasetSpec:
        if self.spec_path:
            spec = load_spec(self.spec_path, landing_dir=self.landing_dir)
            self._check_first_batch(spec)
            return spec
        return payments_spec(Path(self.landing_dir).resolve())

    def _check_first_batch(self, spec: DatasetSpec) -> None:
        """A spec that names columns the first landed batch lacks is refused at load, naming
        the file, column, spec field and close matches."""
        from unified_assets.ml.batch_validation import first_batch_problems

        problems = first_batch_problems(spec)
        if problems:
            raise DatasetSpecError(f"{self.spec_path}: does not match the landed data: "
                                   + "; ".join(problems))

    @property
    def source_uri(self) -> str:
        return self.spec.source.path

    @property
    def labels_uri(self) -> str:
        return self.spec.source.labels_folder

    def batch_files(self) -> dict[str, LandedFile]:
        """Complete batch files by partition key, in name order."""
        return self._list(self.source_uri)[0]

    def scan_batches(self) -> tuple[dict[str, LandedFile], list[str]]:
        """`batch_files`, and the names of the other complete files in the landing zone (not
        matching the spec's `source.glob`): never ingested, so the landing sensor says so."""
        return self._list(self.source_uri)

    def label_files(self) -> dict[str, LandedFile]:
        """Complete late-label files by the partition key of the batch they label."""
        return self._list(self.labels_uri)[0]

    def _list(self, folder_uri: str) -> tuple[dict[str, LandedFile], list[str]]:
        folder = Path(folder_uri)
        if not folder.is_dir():
            return {}, []
        complete = sorted(p for p in folder.iterdir() if p.is_file() and is_complete(p.name))
        files = [p for p in complete if fnmatch.fnmatchcase(p.name, self.spec.source.glob)]
        matched = set(files)
        unmatched = [p.name for p in complete if p not in matched]
        return self._index((p.name, str(p), _version(p)) for p in files), unmatched

    def _index(self, listed) -> dict[str, LandedFile]:
        """Files by partition key, in key order; two names with one key would lose a file, so
        that is an error naming both (the hash in keys makes it practically impossible)."""
        found: dict[str, LandedFile] = {}
        for name, uri, version in listed:
            key = batch_key(name, self.spec.source.extension)
            if key in found:
                raise dg.Failure(f"landed files {found[key].uri} and {uri} map to one partition "
                                 f"key {key!r}; rename one of them")
            found[key] = LandedFile(key, uri, version)
        return dict(sorted(found.items()))

    def fetch(self, landed: LandedFile) -> Path:
        """A local path holding the file's content."""
        return Path(landed.uri)

    def check_unchanged(self, landed: LandedFile) -> None:
        """A file copied in place can change while it is read: fail, so that its final content
        is ingested as its own version rather than a torn read recorded under this one."""
        path = Path(landed.uri)
        current = _version(path) if path.is_file() else "deleted"
        if current != landed.version:
            raise dg.Failure(f"{landed.uri} changed while it was read (version {landed.version} "
                             f"-> {current}); it is ingested again as its new version")

    def batch(self, key: str) -> LandedFile:
        """Partition `key`'s batch file as listed now (uri and version)."""
        return self._find(self.batch_files(), key, self.source_uri, "batch")

    def batches(self, keys: list[str]) -> dict[str, LandedFile]:
        """The batch files of many partitions from one listing (a run over a range lists
        once: a listing stats every file, or is billed LIST requests on S3). Take each
        file's version with `current` just before reading it."""
        files = self.batch_files()
        return {key: self._find(files, key, self.source_uri, "batch") for key in keys}

    def current(self, landed: LandedFile) -> LandedFile:
        """The listed file with its version as of now: a file re-landed since the listing
        is read and recorded as its new version."""
        path = Path(landed.uri)
        if not path.is_file():
            raise dg.Failure(f"batch {landed.key!r} has no file in {self.source_uri}: "
                             f"{landed.uri} was removed after the landing zone was listed")
        return LandedFile(landed.key, landed.uri, _version(path))

    def labels(self, key: str) -> LandedFile:
        """Partition `key`'s late labels file as listed now (uri and version)."""
        return self._find(self.label_files(), key, self.labels_uri, "labels")

    def batch_file(self, key: str) -> Path:
        return self.fetch(self.batch(key))

    def label_file(self, key: str) -> Path:
        return self.fetch(self.labels(key))

    def _find(self, files: dict[str, LandedFile], key: str, where: str, what: str) -> LandedFile:
        if key not in files:
            raise dg.Failure(f"{what} {key!r} has no file in {where} matching "
                             f"{self.spec.source.glob!r}")
        return files[key]


class S3DatasetResource(DatasetResource):
    """The landing zone is an S3 prefix (`s3://bucket/prefix`), read through dagster-aws's
    `S3Resource` (credentials from the standard AWS environment; any S3-compatible
    endpoint). Labels live under `<prefix>/labels/`. An S3 object appears only once its
    upload is complete, so a partly written batch is never listed."""

    landing_uri: str
    s3: dg.ConfigurableResource  # dagster_aws.s3.S3Resource (imported only when configured)
    cache_dir: str = ".unified_ai/landing-cache"

    @property
    def source_uri(self) -> str:
        return self.landing_uri.rstrip("/")

    @property
    def labels_uri(self) -> str:
        return f"{self.source_uri}/labels"

    def _list(self, folder_uri: str) -> tuple[dict[str, LandedFile], list[str]]:
        bucket, prefix = split_s3_uri(folder_uri)
        prefix = f"{prefix}/" if prefix else ""
        client = self.s3.get_client()
        listed, unmatched = [], []
        for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix, Delimiter="/"):
            for item in page.get("Contents", []):
                name = item["Key"][len(prefix):]
                if not is_complete(name) or not name:
                    continue
                if fnmatch.fnmatchcase(name, self.spec.source.glob):
                    listed.append((name, f"s3://{bucket}/{item['Key']}", item["ETag"].strip('"')))
                else:
                    unmatched.append(name)
        return self._index(listed), sorted(unmatched)

    def fetch(self, landed: LandedFile) -> Path:
        """Download once per object version into the cache. The download is pinned to the
        listed ETag: an object replaced since it was listed fails instead of being read as
        this version."""
        from botocore.exceptions import ClientError

        bucket, key = split_s3_uri(landed.uri)
        target = Path(self.cache_dir) / landed.version / Path(key).name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")
            try:
                response = self.s3.get_client().get_object(Bucket=bucket, Key=key,
                                                           IfMatch=f'"{landed.version}"')
                with partial.open("wb") as out:
                    for chunk in response["Body"].iter_chunks(1 << 20):
                        out.write(chunk)
                partial.replace(target)
            except ClientError as error:
                code = str(error.response.get("Error", {}).get("Code", ""))
                if code in ("412", "PreconditionFailed"):
                    raise dg.Failure(f"{landed.uri} changed since it was listed (version "
                                     f"{landed.version}); it is ingested again as its new "
                                     "version") from error
                raise
            finally:
                partial.unlink(missing_ok=True)
        return target

    def current(self, landed: LandedFile) -> LandedFile:
        """The listed object version: `fetch` reads exactly it, or fails when the object
        was replaced since (it is then ingested again as its new version)."""
        return landed

    def check_unchanged(self, landed: LandedFile) -> None:
        """Nothing to check: `fetch` read exactly the listed object version."""


def _version(path: Path) -> str:
    """Changes when the file is replaced (modification time and size)."""
    stat = path.stat()
    return f"{stat.st_mtime_ns}-{stat.st_size}"


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket")
    return bucket, prefix.strip("/")
