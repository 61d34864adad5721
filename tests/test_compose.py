"""The Docker deployment (Dockerfile, docker-compose.yml, .env.example), checked without Docker.

Docker does not run on the developers' machines nor in CI, so these tests read the files
instead: they parse docker-compose.yml, substitute its ``${...}`` the way Compose does,
and start the application's own processes (``manage.py check --deploy``, gunicorn's
``--check-config``, celery, the health checks) with an EMPTY environment except PATH and
what the image and Compose give a container. Which settings production requires is
discovered by running those processes, and which settings exist by parsing the code
that reads them, not written down here.

They depend on no database, broker or cache of the test suite (the processes get the
compose environment): they run once, in the default pass.
"""

from __future__ import annotations

import ast
import os
import re
import secrets
import shlex
import shutil
import stat
import string
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
import yaml
from cryptography.fernet import Fernet

pytestmark = pytest.mark.stack_independent

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
README = ROOT / "README.md"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
# The packages whose code reads settings (backupsite/settings.py and whatever else calls
# the env helpers of backupsite/env.py or os.environ).
APP_PACKAGES = ("backupsite", "jobs", "destinations")
ENV_HELPERS = {"env_str", "env_bool", "env_int", "env_list", "env_secret", "required_secret"}
# Read from the environment, but the system's, not settings of backupsite.
SYSTEM_VARIABLES = {"PATH", "HOME"}
# The PostgreSQL client major version each Debian release ships (postgresql-client).
DEBIAN_POSTGRES_CLIENT = {"bullseye": 13, "bookworm": 15, "trixie": 17}

APP_SERVICES = ("web", "worker", "beat")
# Which Debian package puts each program the app shells out to on PATH. A program added
# to BACKUPSITE_REQUIRED_BINARIES/BACKUPSITE_OPTIONAL_BINARIES must be added here, and
# its package to the Dockerfile.
# (postgresql-client: Debian's, or PGDG's postgresql-client-<major>.)
BINARY_PACKAGES = {
    "zstd": "zstd",
    "tar": "tar",
    "age": "age",
    "pg_dump": "postgresql-client",
    "pg_restore": "postgresql-client",
    "psql": "postgresql-client",
    "mysqldump": "mariadb-client",
    "mariadb-dump": "mariadb-client",
    "mysql": "mariadb-client",
}
# Variables that only steer docker/entrypoint.sh, not the application.
ENTRYPOINT_VARIABLES = {"RUN_MIGRATIONS", "RUN_DEPLOY_CHECK"}
# Container paths that must not be created on the test machine: pointed at tmp_path.
CONTAINER_PATH_VARIABLES = {"BACKUPSITE_DATA_DIR", "STATIC_ROOT"}


# --- Compose's variable substitution ---------------------------------------------------

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<colon>:?)(?P<op>[-?+])(?P<arg>.*))?", re.DOTALL)
_REQUIRED_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?")


class MissingVariable(Exception):
    pass


def interpolate(text: str, values: dict[str, str]) -> str:
    """Substitute ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``... and ``$$``."""

    def replace(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return values.get(match["named"], "")
        braced = _BRACED.fullmatch(match["braced"])
        assert braced, f"unsupported substitution ${{{match['braced']}}}"
        name, colon, op, arg = braced["name"], braced["colon"], braced["op"], braced["arg"]
        assert op is None or "$" not in arg, f"nested substitution in ${{{match['braced']}}} is not handled here"
        value = values.get(name)
        unset = value is None or (colon == ":" and value == "")
        if op is None:
            return value or ""
        if op == "-":
            return arg if unset else value
        if op == "+":
            return "" if unset else arg
        if unset:  # op == "?"
            raise MissingVariable(f"{name}: {arg}")
        return value

    return _VARIABLE.sub(replace, text)


def interpolate_tree(node, values: dict[str, str]):
    if isinstance(node, str):
        return interpolate(node, values)
    if isinstance(node, list):
        return [interpolate_tree(item, values) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, values) for key, value in node.items()}
    return node


def only_guaranteed_references(raw: str) -> bool:
    """True when Compose cannot produce *raw* with a missing part: a literal, or only
    ``${VAR:?...}`` references (Compose refuses to start without them)."""
    for match in _VARIABLE.finditer(raw):
        if match["escaped"]:
            continue
        if match["named"]:
            return False
        braced = _BRACED.fullmatch(match["braced"])
        if not braced or braced["op"] != "?" or braced["colon"] != ":":
            return False
    return True


# --- Reading the files -----------------------------------------------------------------


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def as_mapping(environment) -> dict[str, str | None]:
    if environment is None:
        return {}
    if isinstance(environment, dict):
        return {key: None if value is None else str(value) for key, value in environment.items()}
    result: dict[str, str | None] = {}
    for item in environment:
        key, sep, value = str(item).partition("=")
        result[key] = value if sep else None
    return result


def volume_mounts(service: dict) -> dict[str, str]:
    """target -> source of the service's named-volume mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
        else:
            source, target = volume.get("source"), volume.get("target")
        mounts[target] = source
    return mounts


def env_files(service: dict) -> list[str]:
    value = service.get("env_file", [])
    items = [value] if isinstance(value, (str, dict)) else value
    return [item if isinstance(item, str) else item["path"] for item in items]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, arguments = current.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    return instructions


_ARG_REFERENCE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")


@dataclass
class Stage:
    """One ``FROM`` of the Dockerfile: its base (ARGs substituted), its name, and its
    instructions with the ARGs it declares substituted (other ``$VAR`` are left)."""

    base: str
    name: str | None
    args: dict[str, str] = field(default_factory=dict)
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def substitute(self, text: str, args: dict[str, str] | None = None) -> str:
        known = self.args if args is None else args

        def replace(match: re.Match) -> str:
            name = match["braced"] or match["named"]
            return known[name] if name in known else match[0]

        return _ARG_REFERENCE.sub(replace, text)

    def keyword(self, keyword: str) -> list[str]:
        return [arguments for kw, arguments in self.instructions if kw == keyword]


def dockerfile_stages() -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, arguments in dockerfile_instructions():
        if keyword == "ARG":
            name, sep, default = arguments.partition("=")
            if not stages:
                global_args[name] = default.strip('"')
            else:  # re-declared in a stage: the global default unless it sets one
                stages[-1].args[name] = default.strip('"') if sep else global_args.get(name, "")
            continue
        if keyword == "FROM":
            tokens = arguments.split()
            base = Stage("", None).substitute(tokens[0], global_args)
            name = tokens[2] if len(tokens) >= 3 and tokens[1].upper() == "AS" else None
            stages.append(Stage(base, name))
            continue
        assert stages, f"{keyword} before the first FROM"
        stages[-1].instructions.append((keyword, stages[-1].substitute(arguments)))
    return stages


def final_stage() -> Stage:
    return dockerfile_stages()[-1]


def dockerfile_env() -> dict[str, str]:
    """The ENV of the final image (what every container starts with)."""
    env = {}
    for arguments in final_stage().keyword("ENV"):
        for token in shlex.split(arguments):
            key, sep, value = token.partition("=")
            assert sep, f"use the ENV key=value form in the Dockerfile, not {arguments!r}"
            env[key] = value
    return env


def run_commands(stage: Stage) -> list[list[str]]:
    """Every command of the stage's RUN lines (split at ``&&``), as tokens."""
    return [shlex.split(command) for arguments in stage.keyword("RUN") for command in arguments.split("&&")]


def apt_packages(stage: Stage | None = None) -> set[str]:
    """The Debian packages ``apt-get install``ed in the final image."""
    packages: set[str] = set()
    for tokens in run_commands(stage or final_stage()):
        if tokens[:2] == ["apt-get", "install"]:
            packages.update(token for token in tokens[2:] if not token.startswith("-"))
    return packages


def provides(package: str, installed: set[str]) -> bool:
    """*package* or, for postgresql-client, PGDG's postgresql-client-<major>."""
    if package == "postgresql-client":
        return any(re.fullmatch(r"postgresql-client(-\d+)?", name) for name in installed)
    return package in installed


def image_postgres_client_major(stage: Stage) -> int:
    """Which pg_dump the image gets: PGDG's postgresql-client-<major> once its repository
    is added, else the Debian release's own postgresql-client."""
    installed = apt_packages(stage)
    explicit = [int(m[1]) for name in installed if (m := re.fullmatch(r"postgresql-client-(\d+)", name))]
    if explicit:
        assert len(explicit) == 1, f"more than one PostgreSQL client in the image: {sorted(installed)}"
        pgdg = [tokens for tokens in run_commands(stage) if tokens and tokens[0].endswith("apt.postgresql.org.sh")]
        debian = next((major for codename, major in DEBIAN_POSTGRES_CLIENT.items() if codename in stage.base), None)
        assert pgdg or explicit[0] == debian, (
            f"postgresql-client-{explicit[0]} is not in {stage.base}'s Debian: add PGDG (apt.postgresql.org.sh)"
        )
        return explicit[0]
    assert "postgresql-client" in installed, "the image installs no PostgreSQL client"
    for codename, major in DEBIAN_POSTGRES_CLIENT.items():
        if codename in stage.base:
            return major
    raise AssertionError(f"which postgresql-client does {stage.base} ship? Add it to DEBIAN_POSTGRES_CLIENT")


# --- The environment of a container, and its processes ---------------------------------


def random_secret_key() -> str:
    alphabet = string.ascii_letters + string.digits + "!@#%^&*(-_=+)"
    return "".join(secrets.choice(alphabet) for _ in range(50))


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def shell_values() -> dict[str, str]:
    """What an operator's .env / shell would hold for the ${...} of docker-compose.yml."""
    return {
        "SECRET_KEY": random_secret_key(),
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "backup.example.com",
        "EMAIL_URL": "smtp://mail.example.com:25",
        "BACKUPSITE_SITE_URL": "https://backup.example.com",
        "POSTGRES_PASSWORD": secrets.token_hex(16),
    }


def compose_environment(compose: dict, service: str, values: dict[str, str]) -> dict[str, str]:
    """The service's ``environment:`` after substitution (a bare ``KEY`` passes the shell's)."""
    result = {}
    for key, raw in as_mapping(compose["services"][service].get("environment")).items():
        if raw is None:
            if key in values:
                result[key] = values[key]
        else:
            result[key] = interpolate(raw, values)
    return result


def container_env(
    compose: dict, service: str, values: dict[str, str], tmp_path: Path, static_root: Path | None = None
) -> dict[str, str]:
    """The environment of *service*'s container, runnable on this machine.

    PATH, then the image's ENV, then the service's ``environment:``. The ``env_file``
    (.env) is deliberately left out: whatever production needs must come from the
    ``environment:`` block, where Compose refuses to start when a ``${VAR:?}`` is missing.
    Then the few machine-dependent bits are neutralised: container paths point into
    tmp_path, the binary checks are off (the Dockerfile test covers the binaries) and no
    developer .env is read. STATIC_ROOT is *static_root* when given (the image's
    collected files, see the ``image_static_root`` fixture), else an empty folder.
    """
    env = dockerfile_env()
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")  # the image's /opt/venv is not here
    env.update(compose_environment(compose, service, values))
    for key in ENTRYPOINT_VARIABLES:
        env.pop(key, None)
    env["DJANGO_SETTINGS_MODULE"] = "backupsite.settings"
    env["BACKUPSITE_DATA_DIR"] = str(tmp_path / "data")
    if "STATIC_ROOT" in env:
        env["STATIC_ROOT"] = str(static_root or tmp_path / "static")
    env["BACKUPSITE_ENV_FILE"] = ""
    env["BACKUPSITE_OPTIONAL_BINARIES"] = ""
    env["BACKUPSITE_REQUIRED_BINARIES"] = ""
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def deploy_check(env: dict[str, str]) -> subprocess.CompletedProcess:
    return run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], env)


def output(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def failure_reason(result: subprocess.CompletedProcess) -> str:
    """The check messages (``?: (security.W020) ...``) or the exception line of a failed run."""
    text = result.stdout + result.stderr
    reasons = [line.strip() for line in text.splitlines() if re.match(r"\s*\S*: \(\w+\.[EW]\d+\)", line)]
    return "; ".join(reasons) or last_line(result.stderr) or last_line(result.stdout)


def as_python_module(command: list[str]) -> list[str]:
    """``gunicorn ...`` -> ``-m gunicorn ...`` so this venv's copy runs."""
    assert command[0] in {"gunicorn", "celery"}, f"unexpected program {command[0]!r}"
    return ["-m", *command]


def command_list(value) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(item) for item in value]


@pytest.fixture(scope="module")
def image_static_root(compose, shell_values, tmp_path_factory) -> Path:
    """What the image holds in STATIC_ROOT: ``collectstatic`` as the Dockerfile runs it
    at build time (DEBUG=0, throw-away secrets), once for the module."""
    base = tmp_path_factory.mktemp("image")
    env = container_env(compose, "web", shell_values, base, static_root=base / "staticfiles")
    result = run(["manage.py", "collectstatic", "--noinput"], env)
    assert result.returncode == 0, output(result)
    assert (base / "staticfiles" / "staticfiles.json").is_file()
    return base / "staticfiles"


# --- docker-compose.yml -----------------------------------------------------------------


def test_compose_has_the_services(compose):
    assert "version" not in compose, "the Compose specification has no version: key"
    assert {"postgres", "redis", *APP_SERVICES} <= set(compose["services"])
    for name, service in compose["services"].items():
        assert service.get("restart") == "unless-stopped", name


def test_compose_refuses_to_start_without_its_secrets(compose, shell_values):
    required = set(_REQUIRED_VARIABLE.findall(COMPOSE_FILE.read_text()))
    assert {"SECRET_KEY", "FIELD_ENCRYPTION_KEYS", "POSTGRES_PASSWORD"} <= required
    interpolate_tree(compose, shell_values)  # everything resolves with the values given
    for name in sorted(required):
        values = {key: value for key, value in shell_values.items() if key != name}
        with pytest.raises(MissingVariable, match=name):
            interpolate_tree(compose, values)


def test_app_services_build_the_repository_dockerfile(compose):
    for name in APP_SERVICES:
        build = compose["services"][name].get("build")
        assert build is not None, f"{name} must build the image"
        if isinstance(build, str):
            build = {"context": build}
        context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
        assert context == ROOT, name
        assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE, name
        assert DOCKERFILE.is_file()


def test_app_services_share_the_data_volume(compose, shell_values):
    named_volumes = set(compose.get("volumes") or {})
    sources = set()
    for name in APP_SERVICES:
        data_dir = compose_environment(compose, name, shell_values)["BACKUPSITE_DATA_DIR"]
        mounts = volume_mounts(compose["services"][name])
        assert data_dir in mounts, f"{name}: BACKUPSITE_DATA_DIR={data_dir} is not a mounted volume"
        assert mounts[data_dir] in named_volumes, f"{name}: {mounts[data_dir]!r} is not a named volume"
        sources.add(mounts[data_dir])
    assert len(sources) == 1, f"web, worker and beat must share one data volume, not {sources}"
    # The image agrees on the location, and keeps its static files out of the volume
    # (a volume keeps its first content: stale static files after an upgrade).
    image_env = dockerfile_env()
    (data_dir,) = {compose_environment(compose, name, shell_values)["BACKUPSITE_DATA_DIR"] for name in APP_SERVICES}
    assert image_env.get("BACKUPSITE_DATA_DIR") == data_dir
    for name in APP_SERVICES:
        static_root = compose_environment(compose, name, shell_values).get("STATIC_ROOT", image_env.get("STATIC_ROOT"))
        assert static_root, "STATIC_ROOT must be set (its default lies under the data volume)"
        assert not PurePosixPath(static_root).is_relative_to(data_dir), f"{name}: STATIC_ROOT under the volume"


def test_app_services_agree_on_the_stack_settings(compose, shell_values):
    environments = {name: compose_environment(compose, name, shell_values) for name in APP_SERVICES}
    keys = set().union(*environments.values()) - ENTRYPOINT_VARIABLES
    for key in sorted(keys):
        values = {name: env.get(key) for name, env in environments.items()}
        assert len(set(values.values())) == 1, f"{key} differs between the services: {values}"
    web = environments["web"]
    assert web["DEBUG"].strip().lower() in {"0", "false", "no", "off"}
    postgres = as_mapping(compose["services"]["postgres"]["environment"])
    database = re.fullmatch(r"postgres(?:ql)?://([^:]+):([^@]+)@postgres:5432/(\w+)", web["DATABASE_URL"])
    assert database, web["DATABASE_URL"]
    assert database[1] == postgres["POSTGRES_USER"]
    assert database[2] == interpolate(postgres["POSTGRES_PASSWORD"], shell_values)
    assert database[3] == postgres["POSTGRES_DB"]
    assert re.fullmatch(r"redis://redis:6379/\d+", web["CELERY_BROKER_URL"])
    for name in APP_SERVICES:
        assert ".env" in env_files(compose["services"][name]), name
    migrating = [name for name in APP_SERVICES if environments[name].get("RUN_MIGRATIONS") == "1"]
    assert migrating == ["web"], "exactly one service (web) applies the migrations"
    assert environments["web"].get("RUN_DEPLOY_CHECK") == "1"


def test_services_wait_for_healthy_dependencies(compose):
    services = compose["services"]
    assert "pg_isready" in " ".join(command_list(services["postgres"]["healthcheck"]["test"]))
    assert "ping" in command_list(services["redis"]["healthcheck"]["test"])
    for name in APP_SERVICES:
        depends_on = services[name]["depends_on"]
        for dependency in ("postgres", "redis"):
            assert depends_on[dependency]["condition"] == "service_healthy", (name, dependency)
    healthcheck = command_list(services["web"]["healthcheck"]["test"])
    script = next(item for item in healthcheck if item.endswith(".py"))
    assert (ROOT / PurePosixPath(script).relative_to("/app")).is_file(), script


def test_every_service_has_a_health_check(compose):
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no health check"
        test = command_list(check["test"])
        assert test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, (name, test)
        for key in ("interval", "timeout", "retries"):
            assert key in check, f"{name}: healthcheck without {key}"
    worker = " ".join(command_list(compose["services"]["worker"]["healthcheck"]["test"]))
    assert "inspect ping" in worker and "celery@$$HOSTNAME" in worker
    # beat: the health check reads the .alive file next to the schedule beat really uses.
    beat = command_list(compose["services"]["beat"]["healthcheck"]["test"])
    assert beat[1:4] == ["python", "/app/docker/healthcheck.py", "beat"], beat
    command = command_list(compose["services"]["beat"]["command"])
    assert beat[4] == command[command.index("--schedule") + 1]


def named_volume_sources(service: dict, declared: set[str]) -> list[tuple[str, str | None]]:
    """(volume as written, its named volume or None for a bind mount)."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source = volume.split(":")[0]
            named = None if source.startswith((".", "/", "~", "$")) else source
        else:
            named = volume.get("source") if volume.get("type", "volume") == "volume" else None
        found.append((str(volume), named if named in declared else None))
    return found


def test_every_service_keeps_its_state_in_named_volumes(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for volume, named in named_volume_sources(service, declared):
            assert named, f"{name}: {volume} is not a named volume declared under volumes:"
            used.add(named)
    assert used == declared, f"declared but unused: {sorted(declared - used)}"
    services = compose["services"]
    assert volume_mounts(services["postgres"]).get("/var/lib/postgresql/data") in declared
    assert volume_mounts(services["redis"]).get("/data") in declared
    assert "--appendonly" in command_list(services["redis"]["command"]), "queued runs must survive a Redis restart"


def beat_env(data: Path) -> dict[str, str]:
    """The embedded default in a folder of its own, the reaper every second (beat then
    ticks every second)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DJANGO_SETTINGS_MODULE": "backupsite.settings",
        "BACKUPSITE_ENV_FILE": "",
        "BACKUPSITE_DATA_DIR": str(data),
        "DEBUG": "1",
        "BACKUPSITE_REAPER_SECONDS": "1",
        "PYTHONUNBUFFERED": "1",
    }


def beat_health(schedule: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), "beat", str(schedule)], capture_output=True, text=True, timeout=30
    )


@pytest.mark.slow
def test_the_beat_health_check_follows_a_real_beat(tmp_path):
    """``celery beat`` as the compose service runs it: healthy once it ticks, its .alive
    file (0600) touched on every tick; unhealthy when it never ticked or stopped ticking."""
    from backupsite.beat import PrivateScheduler

    sys.path.insert(0, str(HEALTHCHECK.parent))
    try:
        import healthcheck
    finally:
        sys.path.remove(str(HEALTHCHECK.parent))
    assert 3 * PrivateScheduler.max_interval <= healthcheck.BEAT_MAX_AGE

    schedule = tmp_path / "data" / "celerybeat-schedule"
    alive = Path(f"{schedule}.alive")
    missing = beat_health(schedule)
    assert missing.returncode == 1 and "has not ticked yet" in missing.stderr

    log = tmp_path / "beat.log"
    args = [sys.executable, "-m", "celery", "-A", "backupsite.celery", "beat", "--loglevel", "INFO"]
    with open(log, "wb") as out:
        beat = subprocess.Popen(
            [*args, "--schedule", str(schedule)],
            cwd=ROOT,
            env=beat_env(tmp_path / "data"),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while (result := beat_health(schedule)).returncode != 0:
            assert beat.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"{result.stderr}\n{log.read_text()}"
            time.sleep(0.5)
        assert stat.S_IMODE(alive.stat().st_mode) == 0o600
        first = alive.stat().st_mtime_ns
        deadline = time.monotonic() + 30
        while alive.stat().st_mtime_ns == first:
            assert time.monotonic() < deadline, "the next tick did not touch the .alive file"
            time.sleep(0.2)
    finally:
        beat.terminate()
        beat.wait(timeout=30)
    # Stopped: its last tick grows old.
    old = time.time() - healthcheck.BEAT_MAX_AGE - 5
    os.utime(alive, (old, old))
    stale = beat_health(schedule)
    assert stale.returncode == 1 and "last tick was" in stale.stderr, stale.stderr


def test_service_commands(compose, shell_values):
    services = compose["services"]
    web = command_list(services["web"]["command"])
    assert web[:2] == ["gunicorn", "backupsite.wsgi:application"]
    assert "--bind=0.0.0.0:8000" in web or ["--bind", "0.0.0.0:8000"] in [web[i : i + 2] for i in range(len(web))]
    ports = [str(port.get("target") if isinstance(port, dict) else port) for port in services["web"]["ports"]]
    assert any(port == "8000" or interpolate(port, {}).endswith(":8000") for port in ports), ports
    worker = command_list(services["worker"]["command"])
    assert worker[:4] == ["celery", "-A", "backupsite.celery", "worker"]
    beat = command_list(services["beat"]["command"])
    assert beat[:4] == ["celery", "-A", "backupsite.celery", "beat"]
    schedule = beat[beat.index("--schedule") + 1]
    data_dir = compose_environment(compose, "beat", shell_values)["BACKUPSITE_DATA_DIR"]
    assert PurePosixPath(schedule).is_relative_to(data_dir), "the beat schedule must live in the data volume"


# --- The processes, started with what the containers get ---------------------------------


@pytest.mark.parametrize("service", APP_SERVICES)
def test_deploy_check_is_clean_with_the_compose_environment(
    compose, shell_values, tmp_path, image_static_root, service
):
    """``check --deploy`` needs no live database: the DATABASE_URL of the stack (host
    ``postgres``, which does not resolve here) is used as it is."""
    env = container_env(compose, service, shell_values, tmp_path, image_static_root)
    assert env["DATABASE_URL"].startswith("postgres")
    result = deploy_check(env)
    assert result.returncode == 0, output(result)
    assert "System check identified no issues" in result.stdout, output(result)
    assert "WARNINGS:" not in result.stdout + result.stderr, output(result)
    assert "ERRORS:" not in result.stdout + result.stderr, output(result)
    # The data volume's folder is private (0700), as the image makes /data.
    assert stat.S_IMODE(Path(env["BACKUPSITE_DATA_DIR"]).stat().st_mode) == 0o700


def test_web_start_up_check_refuses_an_image_without_collected_static_files(compose, shell_values, tmp_path):
    """Without ``collectstatic`` every page would answer 500: the web container's
    start-up check (``RUN_DEPLOY_CHECK=1``) must refuse to serve."""
    env = container_env(compose, "web", shell_values, tmp_path)  # empty STATIC_ROOT
    result = deploy_check(env)
    assert result.returncode != 0, output(result)
    assert "backupsite.E004" in result.stdout + result.stderr, output(result)


def test_every_setting_production_requires_is_guaranteed_by_compose(compose, shell_values, tmp_path, image_static_root):
    """Discover the required settings: drop each variable the web service gets from
    Compose in turn; those whose absence makes ``check --deploy`` fail (or the settings
    refuse to load) are required, and Compose must then refuse to start without them."""
    raw = as_mapping(compose["services"]["web"]["environment"])
    base = container_env(compose, "web", shell_values, tmp_path, image_static_root)
    assert deploy_check(base).returncode == 0
    candidates = sorted(set(raw) - ENTRYPOINT_VARIABLES - CONTAINER_PATH_VARIABLES)

    def without(key: str) -> tuple[str, subprocess.CompletedProcess]:
        env = {name: value for name, value in base.items() if name != key}
        return key, deploy_check(env)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        results = dict(pool.map(without, candidates))
    required = sorted(key for key, result in results.items() if result.returncode != 0)
    # Sanity: the discovery works (these three make the check fail on their own).
    assert {"SECRET_KEY", "FIELD_ENCRYPTION_KEYS", "ALLOWED_HOSTS"} <= set(required), required
    for key in required:
        message = failure_reason(results[key])
        assert raw[key] is not None and only_guaranteed_references(raw[key]), (
            f"{key} is required in production ({message}) but docker-compose.yml can start "
            f"without it: give it as ${{{key}:?message}} (it is {raw[key]!r})"
        )


PROCESSES = {
    "manage.py check --deploy": ["manage.py", "check", "--deploy"],
    "celery app": ["-c", "import backupsite.celery"],
}


@pytest.mark.parametrize("process", PROCESSES)
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SECRET_KEY", None),
        ("FIELD_ENCRYPTION_KEYS", None),
        ("SECRET_KEY", "change-me"),
        ("FIELD_ENCRYPTION_KEYS", "change-me"),
    ],
)
def test_refuses_to_start_without_a_real_secret(compose, shell_values, tmp_path, process, variable, value):
    env = container_env(compose, "web", shell_values, tmp_path)
    if value is None:
        del env[variable]
    else:
        env[variable] = value
    result = run(PROCESSES[process], env)
    assert result.returncode != 0, output(result)
    message = last_line(result.stderr)
    assert "ImproperlyConfigured" in message, output(result)
    assert variable in message, output(result)


def test_web_command_and_image_cmd_load_in_gunicorn(compose, shell_values, tmp_path):
    """``gunicorn --check-config`` parses the options and imports the WSGI application."""
    env = container_env(compose, "web", shell_values, tmp_path)
    image_cmd = final_stage().keyword("CMD")[-1]
    for command in (command_list(compose["services"]["web"]["command"]), yaml.safe_load(image_cmd)):
        result = run([*as_python_module(command[:1]), "--check-config", *command[1:]], env)
        assert result.returncode == 0, f"{command}\n{output(result)}"


@pytest.mark.parametrize("service", ["worker", "beat"])
def test_celery_command_loads_the_app_and_accepts_its_options(compose, shell_values, tmp_path, service):
    """``--help`` after the real arguments: Click rejects an unknown option, and ``-A``
    loads the app with the container's settings."""
    env = container_env(compose, service, shell_values, tmp_path)
    command = command_list(compose["services"][service]["command"])
    result = run([*as_python_module(command), "--help"], env)
    assert result.returncode == 0, f"{command}\n{output(result)}"
    probe = run(
        [
            "-c",
            "from backupsite.celery import app; print(app.conf.broker_url); print(app.conf.task_serializer)",
        ],
        env,
    )
    assert probe.returncode == 0, output(probe)
    assert probe.stdout.split() == [env["CELERY_BROKER_URL"], "json"]


# --- Dockerfile and image contents -------------------------------------------------------


def test_dockerfile_is_multi_stage_and_runs_as_an_unprivileged_user():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "build the virtualenv in a stage of its own (multi-stage)"
    build, final = stages[0], stages[-1]
    assert build.name, "the build stage needs a name (FROM … AS build) for COPY --from"
    for stage in stages:
        assert re.fullmatch(r"python:3\.11-slim-\w+", stage.base), stage.base
    assert build.base == final.base, "the virtualenv must run on the Python it was built with"
    # The build installs the requirements; the final image copies them and never runs pip.
    assert any(tokens[:2] == ["pip", "install"] and "requirements.txt" in tokens for tokens in run_commands(build))
    assert not any("pip" in tokens[:3] for tokens in run_commands(final)), "pip runs in the final stage"
    copies = [shlex.split(arguments) for arguments in final.keyword("COPY")]
    assert copies and all(tokens[0] == f"--from={build.name}" for tokens in copies), (
        f"the final image only copies from {build.name}: {copies}"
    )
    copied = {tokens[-1] for tokens in copies}
    assert {"/opt/venv", "/app"} <= copied, copied
    assert dockerfile_env()["PATH"].startswith("/opt/venv/bin:"), "the virtualenv's programs come first"
    assert not {"gcc", "build-essential", "python3-dev", "libpq-dev"} & apt_packages(final)
    # A non-root user, created in the final stage, is the one the image runs as.
    users = final.keyword("USER")
    assert users, "the image must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert any(tokens[:1] == ["useradd"] and user in tokens for tokens in run_commands(final)), f"who creates {user}?"
    after_user = final.instructions[[kw for kw, _ in final.instructions].index("USER") :]
    assert not [kw for kw, _ in after_user if kw in {"RUN", "COPY", "ADD"}], "nothing runs as root after USER"
    assert ("EXPOSE", "8000") in final.instructions
    volumes = " ".join(final.keyword("VOLUME"))
    assert dockerfile_env()["BACKUPSITE_DATA_DIR"] in volumes
    cmd = yaml.safe_load(final.keyword("CMD")[-1])
    assert cmd[:2] == ["gunicorn", "backupsite.wsgi:application"]
    assert "0.0.0.0:8000" in " ".join(cmd)


def test_dockerfile_installs_pinned_requirements_and_collects_static():
    build = dockerfile_stages()[0]
    runs = build.keyword("RUN")
    assert any("pip install" in command and "-r requirements.txt" in command for command in runs)
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            assert "==" in line, f"requirements.txt: {line!r} is not pinned"
    (collect,) = [
        command for stage in dockerfile_stages() for command in stage.keyword("RUN") if "collectstatic" in command
    ]
    assert collect in runs, "collectstatic runs in the build stage"
    for variable in (
        "SECRET_KEY=",
        "FIELD_ENCRYPTION_KEYS=",
        "DEBUG=0",
        f"STATIC_ROOT={dockerfile_env()['STATIC_ROOT']}",
    ):
        assert variable in collect, f"collectstatic needs {variable} on its RUN line"
    assert "change-me" not in collect, "the settings refuse placeholder secrets"
    assert "Fernet.generate_key" in collect, "FIELD_ENCRYPTION_KEYS at build must be a real Fernet key"
    for stage in dockerfile_stages():
        env_keys = {token.partition("=")[0] for arguments in stage.keyword("ENV") for token in shlex.split(arguments)}
        assert not {"SECRET_KEY", "FIELD_ENCRYPTION_KEYS"} & env_keys, "secrets must not be baked into an image ENV"


def test_dockerfile_makes_the_data_volume_private():
    """A new named volume copies the mode of the image's folder: 0700, owned by the
    application's user, or the system check backupsite.W003 stops the web container."""
    final = final_stage()
    data_dir = dockerfile_env()["BACKUPSITE_DATA_DIR"]
    made = [tokens for tokens in run_commands(final) if tokens[:2] == ["install", "-d"] and tokens[-1] == data_dir]
    assert len(made) == 1, f"the Dockerfile must make {data_dir} with install -d -m 0700"
    (tokens,) = made
    assert tokens[tokens.index("-m") + 1] == "0700", tokens
    user = final.keyword("USER")[-1].split(":")[0]
    assert tokens[tokens.index("-o") + 1] == user, tokens


def test_dockerfile_installs_every_program_the_app_runs(compose, shell_values, tmp_path):
    """The list of programs comes from the settings (their defaults in the container)."""
    env = container_env(compose, "web", shell_values, tmp_path)
    del env["BACKUPSITE_OPTIONAL_BINARIES"], env["BACKUPSITE_REQUIRED_BINARIES"]
    result = run(
        [
            "-c",
            "import django; django.setup(); from django.conf import settings as s; "
            "print(' '.join(s.BACKUPSITE_REQUIRED_BINARIES + s.BACKUPSITE_OPTIONAL_BINARIES))",
        ],
        env,
    )
    assert result.returncode == 0, output(result)
    binaries = result.stdout.split()
    assert {"zstd", "tar", "age", "pg_dump"} <= set(binaries)
    installed = apt_packages()
    for binary in binaries:
        assert binary in BINARY_PACKAGES, f"which Debian package provides {binary!r}? Add it to BINARY_PACKAGES"
        assert provides(BINARY_PACKAGES[binary], installed), (
            f"the Dockerfile does not install {BINARY_PACKAGES[binary]}"
        )
    assert {"zstd", "tar", "age", "mariadb-client"} <= installed


def test_the_image_pg_dump_dumps_the_compose_postgresql_and_newer(compose):
    """pg_dump refuses a server of a newer major version than its own (Debian bookworm's
    postgresql-client 15 cannot dump PostgreSQL 16 or 17): the image's client must be at
    least the compose server's major version, and the README says which it is."""
    image = compose["services"]["postgres"]["image"]
    match = re.fullmatch(r"(?:docker\.io/)?(?:library/)?postgres:(\d+)(?:[.\-][\w.\-]*)?", image)
    assert match, f"pin the compose PostgreSQL to a major version, not {image!r}"
    server = int(match[1])
    client = image_postgres_client_major(final_stage())
    assert client >= server, f"the image's pg_dump is {client}, older than the compose PostgreSQL {server}"
    assert client > DEBIAN_POSTGRES_CLIENT["bookworm"]
    readme = README.read_text()
    assert f"postgresql-client-{client}" in readme, f"README.md must say which pg_dump the image has ({client})"
    assert f"PostgreSQL {server}" in readme, "README.md must say which PostgreSQL the compose stack runs"


def test_entrypoint_script():
    entrypoints = final_stage().keyword("ENTRYPOINT")
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    (path,) = yaml.safe_load(entrypoints[-1])
    script = ROOT / PurePosixPath(path).relative_to("/app")
    assert script.is_file(), path
    assert os.access(script, os.X_OK) or f"chmod 0755 {script.relative_to(ROOT)}" in DOCKERFILE.read_text(), (
        f"{path} is not executable"
    )
    text = script.read_text()
    assert text.startswith("#!/bin/sh")
    assert re.search(r"^set -eu\b", text, re.MULTILINE)
    assert last_line(text) == 'exec "$@"'
    assert "migrate --noinput" in text and "RUN_MIGRATIONS" in text
    assert "check --deploy --fail-level WARNING" in text
    sh = shutil.which("sh")
    if sh:
        result = subprocess.run([sh, "-n", str(script)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr


def test_dockerignore_keeps_secrets_and_local_data_out():
    patterns = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()}
    # settings.py reads /app/.env when it exists: a developer's .env must never be copied.
    assert ".env" in patterns
    assert {".git", ".venv", "var"} <= {pattern.rstrip("/") for pattern in patterns}
    assert not any(pattern.rstrip("/") in {"docker", "docker/*"} for pattern in patterns)
    assert not {"gunicorn.conf.py", "*.py"} & patterns, "gunicorn reads /app/gunicorn.conf.py (LOG_FORMAT=json)"


def test_required_compose_variables_are_documented_in_env_example():
    required = sorted(set(_REQUIRED_VARIABLE.findall(COMPOSE_FILE.read_text())))
    assert required
    text = ENV_EXAMPLE.read_text()
    missing = [name for name in required if not re.search(rf"^\s*(#\s*)?(export\s+)?{name}\s*=", text, re.MULTILINE)]
    assert not missing, f".env.example does not document {missing} (docker-compose.yml requires them)"


# --- .env.example and README against the code -------------------------------------------


def _call_name(node: ast.Call) -> str:
    return ast.unparse(node.func)


def settings_read_from_the_environment() -> dict[str, set[str]]:
    """Every variable the application reads: the first argument of each call of the env
    helpers (backupsite/env.py) and of ``os.environ.get`` / ``os.getenv`` / ``os.environ[…]``
    with a literal name, in backupsite/settings.py and the rest of the application's
    packages; name -> the files that read it."""
    found: dict[str, set[str]] = {}
    for package in APP_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                name = None
                if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                    called = _call_name(node)
                    if called.rsplit(".", 1)[-1] in ENV_HELPERS or called in {"os.environ.get", "os.getenv"}:
                        name = node.args[0].value
                elif (
                    isinstance(node, ast.Subscript)
                    and ast.unparse(node.value) == "os.environ"
                    and isinstance(node.slice, ast.Constant)
                ):
                    name = node.slice.value
                if isinstance(name, str):
                    found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def env_example_variables() -> set[str]:
    """Variables set or shown commented out (``# NAME=…``) in .env.example."""
    pattern = re.compile(r"^\s*(?:#\s*)?(?:export\s+)?([A-Z][A-Z0-9_]*)=", re.MULTILINE)
    return set(pattern.findall(ENV_EXAMPLE.read_text()))


def compose_variables() -> set[str]:
    """Variables docker-compose.yml substitutes (``${NAME…}``, ``$NAME``), read from .env."""
    names = set()
    for match in _VARIABLE.finditer(COMPOSE_FILE.read_text()):
        if match["named"]:
            names.add(match["named"])
        elif match["braced"]:
            braced = _BRACED.fullmatch(match["braced"])
            if braced:
                names.add(braced["name"])
    return names


def test_env_example_lists_every_setting_the_app_reads_and_nothing_else():
    read = settings_read_from_the_environment()
    # The scan finds what it must (settings.py through the helpers, a direct os.environ read).
    assert {"SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "LOG_FORMAT", "DEBUG"} <= set(read), sorted(read)
    assert "backupsite/sensitive.py" in read["BACKUPSITE_ENV_FILE"]
    documented = env_example_variables()
    missing = sorted(set(read) - SYSTEM_VARIABLES - documented)
    where = ", ".join(sorted(set().union(*(read[name] for name in missing)))) if missing else ""
    assert not missing, f".env.example does not list {missing} (read in {where}): add each, with its default"
    unknown = sorted(documented - set(read) - compose_variables())
    assert not unknown, f".env.example lists {unknown}, which neither the application nor docker-compose.yml reads"


def test_readme_documents_every_setting():
    readme = README.read_text()
    undocumented = sorted(
        name for name in set(settings_read_from_the_environment()) - SYSTEM_VARIABLES if f"`{name}`" not in readme
    )
    assert not undocumented, f"README.md (Configuration) does not mention {undocumented}"
