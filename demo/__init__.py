"""``arcctl demo``: the sandbox, the relay and an agent as supervised processes
on loopback.

Modules: ``environment`` (the processes and files: :class:`DemoEnvironment`),
``identity`` (the sandbox issuer's demo users and the ``oidc`` config section),
``seed`` (what the demo creates in the sandbox API server), ``processes``
(one child process: start, ready file, exit, stop), ``supervisor`` (report and
restart children that die), ``web`` (what the demo pods' port 8080 forwards to),
``cli`` (the command line, run as ``python -m demo``).

The demo imports ``client``, ``sandbox`` and ``certs``; nothing imports the
demo but the tests and ``bench/`` (``arcctl demo`` runs it as a process).
"""

from __future__ import annotations

from demo.environment import CHILD_NAMES, DemoEnvironment
from demo.identity import DemoIdentity, load_demo_identity
from demo.processes import Child, free_port, wait_until
from demo.supervisor import RestartBackoff, Supervisor

__all__ = [
    "CHILD_NAMES",
    "Child",
    "DemoEnvironment",
    "DemoIdentity",
    "RestartBackoff",
    "Supervisor",
    "free_port",
    "load_demo_identity",
    "wait_until",
]
