"""Instances that keep their state apart, each in a SQLite file of its own, behind one nginx: what
breaks when a service's state lives in each instance (notebook 08, section 1). ``Fleet`` is the
fix: the same instances on one shared database."""

from __future__ import annotations

import asyncio
import os
import weakref
from pathlib import Path

from helpers.fleet.instance import Instance
from helpers.fleet.nginx import Nginx
from helpers.fleet.ports import free_port


class Apart:
    """``size`` instances of ``python -m helpers.web``, each on its own SQLite file, and nginx."""

    def __init__(self, folder: Path, size: int = 2, users: list[str] | None = None) -> None:
        self.folder = Path(folder).resolve()
        env = {n: v for n, v in os.environ.items() if n != "DATABASE_URL"}  # SQLite, each its own
        args = ["--users", ",".join(users or ["alice", "bob"])]  # each issues its own tokens
        self.instances = [
            Instance(f"i{k}", "127.0.0.1", free_port(), self.folder / f"i{k}", args, env)
            for k in range(1, size + 1)
        ]
        self.nginx = Nginx(self.folder / "nginx", [i.upstream for i in self.instances])
        self._finalizer = weakref.finalize(self, _stop_now, self.instances, self.nginx)

    @property
    def url(self) -> str:
        return self.nginx.url

    async def start(self) -> Apart:
        """Start the instances, wait until each is ready, then nginx in front of them."""
        try:
            for instance in self.instances:
                await asyncio.to_thread(instance.launch)
            await asyncio.gather(*(i.wait_ready() for i in self.instances))
            await asyncio.to_thread(self.nginx.start)
        except BaseException:
            self.stop()
            raise
        return self

    def tokens(self, index: int = 0) -> dict[str, str]:
        """The users' tokens issued by instance ``index`` (known to its own database only)."""
        return self.instances[index].tokens()

    def stop(self) -> None:
        """Stop nginx and the instances (safe to call twice)."""
        self._finalizer()


def _stop_now(instances: list[Instance], nginx: Nginx) -> None:
    nginx.stop()
    for instance in instances:
        instance.stop()
