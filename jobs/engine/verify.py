"""Check a stored archive against its manifest in one streaming pass (Django-free).

The archive is read once by :class:`~jobs.engine.reader.ArchiveReader` (stored bytes →
sha256 + size → age → zstd → tar), and every member is compared with the manifest by
:class:`~jobs.engine.members.ManifestCheck` (the rule restore applies too): type,
symlink target, size, sha256 of the data, nothing missing, nothing extra; then the stored
bytes' size and sha256. Problems name the members concerned. Nothing is held whole: what
grows with the archive is only the manifest's member table, which the caller already
holds.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from jobs.engine.members import ManifestCheck, archive_problems, expected_archive, stream_problem
from jobs.engine.reader import ArchiveReader, ProgressCallback, StreamError
from jobs.engine.stored import RawReader

MAX_PROBLEMS = 50


@dataclass
class VerifyResult:
    ok: bool = False
    archive_sha256: str = ""
    problems: list[str] = field(default_factory=list)
    members_checked: int = 0  # file members whose size and sha256 were compared
    bytes: int = 0  # stored bytes read (and hashed)
    content_bytes: int = 0  # bytes of file data hashed
    problem_count: int = 0  # all problems, also those beyond MAX_PROBLEMS
    contents_checked: bool = True  # False: encrypted and no identity: only the stored bytes were checked
    seconds: float = 0.0
    where: str = ""  # set by callers: what was read ("the local copy", a destination)

    def add(self, problem: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    @property
    def message(self) -> str:
        """One line for logs, e-mails and the command's error."""
        if self.ok:
            if not self.contents_checked:
                return (
                    f"Archive checksum OK ({self.bytes} bytes); contents not checked (encrypted, and no key was given)."
                )
            return f"OK: {self.members_checked} files match the manifest (sha256 {self.archive_sha256})."
        if not self.problems:
            return "Verification failed."
        more = self.problem_count - 1
        return self.problems[0] + (f" (and {more} more problem{'s' if more != 1 else ''})" if more else "")


def verify_archive(
    stream: BinaryIO,
    manifest: dict,
    identities: Iterable | None = None,
    progress: ProgressCallback | None = None,
    *,
    decrypt_in: str = "process",
    progress_interval: float = 0.5,
) -> VerifyResult:
    """Check *stream* (the stored archive, read once) against *manifest*.

    Compares the stored bytes' size and sha256, decrypts (when the manifest says the
    archive is encrypted and *identities* are given: "AGE-SECRET-KEY-…" strings or
    pyrage identities), decompresses and parses the tar, and compares every member
    with the manifest: file sizes and sha256, directory and symlink entries, members
    missing or unexpected. Without identities an encrypted archive's stored bytes are
    still checked, and ``contents_checked`` is False.

    Problems name the member(s) concerned, first ones first. Raises
    :class:`SourceReadError` when the stored stream itself cannot be read (a network or
    disk error says nothing about the archive) and :class:`DecryptionError` for a
    malformed identity. *progress* is called with (stored bytes read, expected size).
    """
    started = time.monotonic()
    exp_size, exp_sha, encrypted = expected_archive(manifest)
    result = VerifyResult()
    last_report = time.monotonic()

    def report(force: bool = False) -> None:
        nonlocal last_report
        if progress is None:
            return
        now = time.monotonic()
        if force or now - last_report >= progress_interval:
            last_report = now
            progress(reader.raw_size, exp_size)

    if encrypted and identities is None:
        raw = RawReader(stream)
        raw.drain()
        result.contents_checked = False
        for problem in archive_problems(raw.size, raw.hexdigest(), exp_size, exp_sha):
            result.add(problem)
        result.bytes, result.archive_sha256 = raw.size, raw.hexdigest()
        result.ok = result.problem_count == 0
        result.seconds = time.monotonic() - started
        return result

    check = ManifestCheck(manifest)
    broken: StreamError | None = None
    with ArchiveReader(stream, encrypted=encrypted, identities=identities, decrypt_in=decrypt_in) as reader:
        try:
            for info in reader.members():
                problem = check.member(info.name, info)
                if problem is not None:
                    result.add(problem)
                    continue
                if info.isreg():
                    digest = hashlib.sha256()
                    for chunk in reader.member_chunks(info):
                        digest.update(chunk)
                        result.content_bytes += len(chunk)
                        report()
                    result.members_checked += 1
                    problem = check.content(info.name, digest.hexdigest())
                    if problem is not None:
                        result.add(problem)
                report()
        except StreamError as exc:
            broken = exc
            cause = reader.failure_cause()
            trailing: list[str] = []
        else:
            cause = None
            trailing = reader.finish()
        reader.raw.drain()
        size, sha = reader.raw_size, reader.raw_sha256

    raw_problems = archive_problems(size, sha, exp_size, exp_sha)
    if broken is not None:
        result.add(stream_problem(broken, reader.last, size < exp_size, cause))
    else:
        for problem in trailing:
            result.add(problem)
    missing = check.missing()
    if broken is not None or trailing:
        if missing:
            result.add(f"{len(missing)} member(s) of the manifest not checked: the archive cannot be read that far")
    else:
        for path in missing:
            result.add(f"{path}: missing from the archive")
    for problem in raw_problems:
        result.add(problem)
    result.bytes, result.archive_sha256 = size, sha
    result.ok = result.problem_count == 0
    result.seconds = time.monotonic() - started
    if progress is not None:
        progress(size, exp_size)
    return result
