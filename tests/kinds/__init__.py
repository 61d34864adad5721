"""One module per destination kind: a session-scoped real server (where the kind needs
one) and a :class:`KindUnderTest` fixture that ``tests/test_destination_contract.py``
runs the whole contract against. A new kind gets the whole suite by adding its module
here, its name to ``pytest_plugins`` and its fixture name to ``KIND_FIXTURES`` there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class KindUnderTest:
    """A destination of one kind, configured against a real server, plus raw access to
    that server's storage (bypassing the backend) so the tests can check what is really
    there."""

    kind: str
    settings: dict
    secrets: dict = field(default_factory=dict)
    #: Names of every file really in ``<base>/<folder>`` at the server, hidden ones too.
    raw_names: Callable[[str], list[str]] | None = None
    #: The bytes of ``<base>/<folder>/<name>`` as the server stores them.
    raw_read: Callable[[str, str], bytes] | None = None
    #: Put a file there behind the backend's back (foreign files, leftovers).
    raw_write: Callable[[str, str, bytes], None] | None = None
    #: Settings/secrets that must fail the test button (a wrong password).
    wrong_secrets: dict | None = None
    #: The plain secret values that must never appear in messages or reprs.
    plain_secrets: list[str] = field(default_factory=list)

    def destination(self, **overrides):
        from destinations.models import Destination

        values = {
            "name": f"{self.kind} under test",
            "kind": self.kind,
            "settings": self.settings,
            "secrets": self.secrets,
        }
        values.update(overrides)
        return Destination(**values)

    def backend(self, **overrides):
        return self.destination(**overrides).backend()
