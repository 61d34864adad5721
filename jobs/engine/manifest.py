"""The manifest ``<archive>.manifest.json``: what is in an archive, with checksums.

It is written after the archive, in a streaming way (members come from a JSON-lines
file that the archive writer filled), so its size never has to fit in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TextIO

MANIFEST_FORMAT = "backupsite-manifest/1"


def write_manifest(out: TextIO, header: dict, members_lines: TextIO) -> None:
    """Write the manifest: *header* fields, then ``"members": [...]`` from *members_lines*."""
    head = json.dumps({"format": MANIFEST_FORMAT, **header}, indent=1, sort_keys=False)
    assert head.endswith("}")
    out.write(head[:-1].rstrip())
    out.write(',\n "members": [')
    first = True
    for line in members_lines:
        line = line.strip()
        if not line:
            continue
        out.write("\n  " if first else ",\n  ")
        out.write(line)
        first = False
    out.write("\n ]\n}\n")


def read_manifest(fh: TextIO) -> dict:
    data = json.load(fh)
    if data.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"Not a backupsite manifest (format {data.get('format')!r}).")
    return data


def iter_file_members(manifest: dict) -> Iterator[dict]:
    for member in manifest.get("members", []):
        if member.get("type") == "file":
            yield member
