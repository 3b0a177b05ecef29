"""Test support shared by every test directory.

Modules, one concern each:

- ``waits``: the bound on every wait (``WAIT``) and bounded waits on a condition.
- ``processes``: ``LineReader`` and ``ChildProcess``, the one way a test starts a
  child process and waits for the line that says it is ready.
- ``servers``: small TCP servers on 127.0.0.1 port 0 (echo, banner, a refusing port).
- ``relay``: ``RelayEnv``, an in-process relay with the sandbox OIDC issuer,
  agents and clients.
- ``e2e``: ``arc-proxy`` processes and a kubectl runner for the end-to-end tests.
- ``lifecycle``: ``LifecycleEnv``, the demo's processes with no cluster
  registered, ``arcctl`` and ``arc-agent`` as processes.

Every port is bound as port 0 and read back: by the test itself for in-process
servers, from the ready line a child prints for child processes.
"""
