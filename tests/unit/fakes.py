"""Stand-ins for the operator's terminal and the change pipeline, for tests of what fab tasks call."""

from __future__ import annotations

from roadie.core.cli import Terminal, prefixed
from roadie.core.errors import RoadieError
from roadie.core.inventory import Host, UndefinedVariable


class ScriptedTerminal(Terminal):
    """Records what a command says and asks; answers every question with `answer`."""

    def __init__(self, answer: bool = True) -> None:
        super().__init__(yes=answer)
        self.answer = answer
        self.said: list[str] = []
        self.asked: list[str] = []
        self.events: list[str] = []          # said and asked, in order

    def say(self, text: str, host: str | None = None) -> None:
        line = prefixed(host, text) if host else text
        self.said.append(line)
        self.events.append(line)

    def confirm(self, what: str) -> None:
        self.asked.append(what)
        self.events.append(f"? {what}")
        if not self.answer:
            raise RoadieError("not confirmed; nothing changed")


class RecordedChange:
    """maintenance.Guarded without a lock host: records each change it was entered for."""

    entered: list[RecordedChange] = []

    def __init__(self, inv: object, action: str, *, hosts: list[str], message: str = "", release: str = "",
                 lock: bool = True) -> None:
        self.action, self.hosts, self.message, self.lock = action, hosts, message, lock
        self.detail: dict = {}
        self.result = None
        self.conn = None

    def __enter__(self) -> RecordedChange:
        RecordedChange.entered.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def addresses_only(hosts: dict[str, Host]):
    """An inventory resolver that knows each host's roadie_private_address and no other variable."""
    def resolve(host: str, name: str) -> str:
        if name != "roadie_private_address":
            raise UndefinedVariable(f"inventory lab: {host} has no variable {name}")
        return hosts[host].address
    return resolve
