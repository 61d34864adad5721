"""The S3-compatible kind against moto's server mode (a real HTTP S3 endpoint on loopback).

moto runs as a child process (``python -m moto.server``) on a free port, dies with
pytest (parent-death signal), and checks signatures: ``INITIAL_NO_AUTH_ACTION_COUNT``
lets the fixture create an IAM user and its access key with the first three requests,
after which every request must be signed with a real key (so a wrong secret key fails
as it would at a real store). What moto does *not* do: verify ``Content-MD5`` (real
stores refuse a part whose bytes do not match it with ``BadDigest``); the ETag moto
returns is the real MD5, so the HEAD check after each upload is exercised.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kinds import KindUnderTest

START_TIMEOUT = 60
BUCKET = "backupsite-test"
PREFIX = "office/server1"


@dataclass
class MotoServer:
    port: int
    access_key: str
    secret_key: str
    directory: Path
    region: str = "us-east-1"
    bucket: str = BUCKET
    prefix: str = PREFIX

    def settings(self, **overrides) -> dict:
        """Destination settings for this server (the user's access key; path-style)."""
        values = {
            "endpoint_url": self.endpoint,
            "region": self.region,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "access_key": self.access_key,
            "path_style": True,
        }
        values.update(overrides)
        return values

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, *, endpoint: str | None = None):
        """A raw client (bypassing the backend) with the user's key."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server():
    pytest.importorskip("moto.server", reason="moto[server] is not installed (requirements-dev.txt)")
    import boto3

    from tests.servers import _die_with_parent, _stop, _tail

    directory = Path(tempfile.mkdtemp(prefix="backupsite-moto-"))
    log = directory / "moto.log"
    port = _free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(directory),
        # The first three requests (user, policy, key) go unsigned; then auth is enforced.
        "INITIAL_NO_AUTH_ACTION_COUNT": "3",
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=directory,
            env=env,
            preexec_fn=_die_with_parent,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto exited with {proc.returncode}:\n{_tail(log)}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto did not start within {START_TIMEOUT} s:\n{_tail(log)}") from None
                time.sleep(0.05)
        iam = boto3.session.Session().client(
            "iam",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="backupsite")
        iam.put_user_policy(
            UserName="backupsite",
            PolicyName="s3",
            PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
            ),
        )
        key = iam.create_access_key(UserName="backupsite")["AccessKey"]
        server = MotoServer(port, key["AccessKeyId"], key["SecretAccessKey"], directory)
        server.client().create_bucket(Bucket=BUCKET)
    except BaseException:
        _stop(proc, 15)
        shutil.rmtree(directory, ignore_errors=True)
        raise
    yield server
    _stop(proc, 15)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def s3_kind(moto_server, settings) -> KindUnderTest:
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = True
    raw = moto_server.client()

    def where(folder: str) -> str:
        return f"{PREFIX}/{folder}/" if folder else f"{PREFIX}/"

    def raw_names(folder: str) -> list[str]:
        prefix = where(folder)
        names = []
        for page in raw.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix, Delimiter="/"):
            names += [item["Key"][len(prefix) :] for item in page.get("Contents", [])]
        return sorted(names)

    def raw_read(folder: str, name: str) -> bytes:
        return raw.get_object(Bucket=BUCKET, Key=where(folder) + name)["Body"].read()

    def raw_write(folder: str, name: str, data: bytes) -> None:
        raw.put_object(Bucket=BUCKET, Key=where(folder) + name, Body=data)

    return KindUnderTest(
        kind="s3",
        settings=moto_server.settings(),
        secrets={"secret_key": moto_server.secret_key},
        raw_names=raw_names,
        raw_read=raw_read,
        raw_write=raw_write,
        wrong_secrets={"secret_key": "wrong-" + secrets.token_hex(8)},
        plain_secrets=[moto_server.secret_key],
    )
