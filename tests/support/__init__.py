"""Test support shared by every test directory.

Modules, one concern each:

- ``waits``: the bound on every wait (``WAIT``) and bounded waits on a condition
  (``until`` on the event loop, ``wait_until`` in synchronous tests).
- ``processes``: ``LineReader`` and ``ChildProcess``, the one way a test starts a
  child process and waits for it to be ready (a line it prints, or a ready file).
- ``servers``: small TCP servers on 127.0.0.1 port 0 (echo, banner, threaded),
  and a port that refuses connections.
- ``pki``: the CA and serving certificates of kube-aad-proxy and its upstream.
- ``kube_aad_proxy``: a recording TLS upstream and raw HTTP/1.1 client helpers.
- ``relay``: ``RelayEnv``, an in-process relay with the sandbox OIDC issuer,
  agents and clients.
- ``sandbox``: the sandbox API server in process (own loop thread) or as a
  child, and ``SessionSpy`` on a pod's exec/attach sessions.
- ``e2e``: ``arc-proxy`` processes and a kubectl runner for the end-to-end tests.
- ``lifecycle``: ``LifecycleEnv``, the demo's processes with no cluster
  registered, ``arcctl`` and ``arc-agent`` as processes.
- ``kubectl``: finding versioned kubectl binaries (skip when absent).

The ``idp`` and ``relay_env`` fixtures are in ``tests/conftest.py``.

Every port is bound as port 0 and read back: by the test itself for in-process
servers, from the ready line a child prints for child processes.
"""
