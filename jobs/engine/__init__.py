"""The archive engine: streaming tar → zstd → sha256 → file, plus the manifest.

This package must not import Django: it is tested and benchmarked on its own
(``bench/archive.py``). The Django side (``jobs.sources``, ``jobs.services``) turns
database rows into the plain values and callables used here.
"""

from jobs.engine.archive import (
    ArchiveError,
    ArchiveResult,
    Cancelled,
    Entry,
    write_archive,
)
from jobs.engine.atomic import atomic_path
from jobs.engine.manifest import MANIFEST_FORMAT, read_manifest, write_manifest
from jobs.engine.walk import walk_directory

__all__ = [
    "MANIFEST_FORMAT",
    "ArchiveError",
    "ArchiveResult",
    "Cancelled",
    "Entry",
    "atomic_path",
    "read_manifest",
    "walk_directory",
    "write_archive",
    "write_manifest",
]
