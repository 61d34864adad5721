"""The Docker deployment (Dockerfile, docker-compose.yml), checked without Docker.

Docker does not run on the developers' machines nor in CI, so these tests read the files
instead: they parse docker-compose.yml, substitute its ``${...}`` the way Compose does,
and start the application's own processes (``manage.py check --deploy``, gunicorn's
``--check-config``, celery) with an EMPTY environment except PATH and what the image and
Compose give a container. Which settings production requires is discovered by running
those processes, not written down here.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import stat
import string
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import pytest
import yaml
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"

APP_SERVICES = ("web", "worker", "beat")
# Which Debian package puts each program the app shells out to on PATH. A program added
# to BACKUPSITE_REQUIRED_BINARIES/BACKUPSITE_OPTIONAL_BINARIES must be added here, and
# its package to the Dockerfile.
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


def dockerfile_env() -> dict[str, str]:
    env = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "ENV":
            for token in shlex.split(arguments):
                key, sep, value = token.partition("=")
                assert sep, f"use the ENV key=value form in the Dockerfile, not {arguments!r}"
                env[key] = value
    return env


def apt_packages() -> set[str]:
    packages: set[str] = set()
    for keyword, arguments in dockerfile_instructions():
        if keyword != "RUN" or "apt-get install" not in arguments:
            continue
        for command in arguments.split("&&"):
            tokens = shlex.split(command)
            if tokens[:2] == ["apt-get", "install"]:
                packages.update(token for token in tokens[2:] if not token.startswith("-"))
    return packages


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
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update(dockerfile_env())
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
    assert volume_mounts(services["postgres"]).get("/var/lib/postgresql/data") in compose["volumes"]
    assert volume_mounts(services["redis"]).get("/data") in compose["volumes"]
    for name in APP_SERVICES:
        depends_on = services[name]["depends_on"]
        for dependency in ("postgres", "redis"):
            assert depends_on[dependency]["condition"] == "service_healthy", (name, dependency)
    healthcheck = command_list(services["web"]["healthcheck"]["test"])
    script = next(item for item in healthcheck if item.endswith(".py"))
    assert (ROOT / PurePosixPath(script).relative_to("/app")).is_file(), script


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
    image_cmd = next(arguments for keyword, arguments in dockerfile_instructions() if keyword == "CMD")
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


def test_dockerfile_base_user_port_and_command():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim-bookworm")
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users, "the image must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert re.search(rf"useradd\b[^&]*\b{re.escape(user)}\b", DOCKERFILE.read_text()), f"who creates {user}?"
    assert ("EXPOSE", "8000") in instructions
    volumes = " ".join(arguments for keyword, arguments in instructions if keyword == "VOLUME")
    assert dockerfile_env()["BACKUPSITE_DATA_DIR"] in volumes
    cmd = yaml.safe_load(next(arguments for keyword, arguments in instructions if keyword == "CMD"))
    assert cmd[:2] == ["gunicorn", "backupsite.wsgi:application"]
    assert "0.0.0.0:8000" in " ".join(cmd)


def test_dockerfile_installs_pinned_requirements_and_collects_static():
    runs = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "RUN"]
    assert any("pip install" in command and "-r requirements.txt" in command for command in runs)
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            assert "==" in line, f"requirements.txt: {line!r} is not pinned"
    (collect,) = [command for command in runs if "collectstatic" in command]
    for variable in ("SECRET_KEY=", "FIELD_ENCRYPTION_KEYS=", "DEBUG=0"):
        assert variable in collect, f"collectstatic needs {variable} on its RUN line"
    assert "change-me" not in collect, "the settings refuse placeholder secrets"
    assert "Fernet.generate_key" in collect, "FIELD_ENCRYPTION_KEYS at build must be a real Fernet key"
    env_keys = set(dockerfile_env())
    assert not {"SECRET_KEY", "FIELD_ENCRYPTION_KEYS"} & env_keys, "secrets must not be baked into the image ENV"


def test_dockerfile_makes_the_data_volume_private():
    """A new named volume copies the mode of the image's folder: 0700, owned by the
    application's user, or the system check backupsite.W003 stops the web container."""
    data_dir = dockerfile_env()["BACKUPSITE_DATA_DIR"]
    runs = " && ".join(arguments for keyword, arguments in dockerfile_instructions() if keyword == "RUN")
    made = [
        shlex.split(command)
        for command in runs.split("&&")
        if command.split()[:2] == ["install", "-d"] and command.split()[-1] == data_dir
    ]
    assert len(made) == 1, f"the Dockerfile must make {data_dir} with install -d -m 0700"
    (tokens,) = made
    assert tokens[tokens.index("-m") + 1] == "0700", tokens
    user = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "USER"][-1].split(":")[0]
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
        assert BINARY_PACKAGES[binary] in installed, f"the Dockerfile does not install {BINARY_PACKAGES[binary]}"
    assert {"zstd", "tar", "age", "postgresql-client", "mariadb-client"} <= installed


def test_entrypoint_script():
    entrypoints = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "ENTRYPOINT"]
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    (path,) = yaml.safe_load(entrypoints[-1])
    script = ROOT / PurePosixPath(path).relative_to("/app")
    assert script.is_file(), path
    assert os.access(script, os.X_OK) or "chmod" in DOCKERFILE.read_text(), f"{path} is not executable"
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


def test_required_compose_variables_are_documented_in_env_example():
    required = sorted(set(_REQUIRED_VARIABLE.findall(COMPOSE_FILE.read_text())))
    assert required
    if not ENV_EXAMPLE.is_file():
        pytest.skip(".env.example does not exist yet: nothing to check the required variables against")
    text = ENV_EXAMPLE.read_text()
    missing = [name for name in required if not re.search(rf"^\s*(#\s*)?(export\s+)?{name}\s*=", text, re.MULTILINE)]
    assert not missing, f".env.example does not document {missing} (docker-compose.yml requires them)"
