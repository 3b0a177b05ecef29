"""The relay's runtime defaults (``RelayConfig()``, used when a test or a bench
builds a relay in code) are the config file's defaults (``RelayFile``, what an
operator gets from an empty file): one set of numbers, checked so they cannot
drift apart when a key is added to one and not the other."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from relay.config import RelayConfig, relay_config_from_dict

# Derived from where the file is, not a default of the schema.
_PATH_FIELDS = {"state_dir", "database", "tls_cert_file", "tls_key_file", "public_url"}


def test_an_empty_relay_config_file_gives_the_runtime_defaults(tmp_path: Path) -> None:
    from_file = relay_config_from_dict({"state_dir": str(tmp_path)}, base_dir=tmp_path)
    in_code = RelayConfig(state_dir=str(tmp_path))
    differ = {
        f.name: (getattr(from_file, f.name), getattr(in_code, f.name))
        for f in dataclasses.fields(RelayConfig)
        if f.name not in _PATH_FIELDS and getattr(from_file, f.name) != getattr(in_code, f.name)
    }
    assert differ == {}, f"RelayConfig and RelayFile defaults differ (file, code): {differ}"

