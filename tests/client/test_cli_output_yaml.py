"""``arcctl ... -o yaml``: certificates as block scalars, and every value
reads back exactly as it was."""

from __future__ import annotations

import yaml
from hypothesis import given
from hypothesis import strategies as st

from certs import generate_key_pair
from client.output import render


def test_yaml_output_shows_a_certificate_as_a_block_scalar() -> None:
    """A PEM certificate is printed as ``key: |`` and its lines, indented, as
    ``arcctl show -o yaml`` users copy it."""
    pem = generate_key_pair("rg/c").certificate_pem.decode()
    text = render({"name": "c", "agentPublicKeyCertificate": pem}, "yaml")
    lines = text.splitlines()
    assert lines[1] == "agentPublicKeyCertificate: |"
    assert lines[2:] == ["  " + line for line in pem.rstrip("\n").splitlines()]
    # arcctl prints the text and a newline: that is what a reader parses.
    assert yaml.safe_load(text + "\n") == {"name": "c", "agentPublicKeyCertificate": pem}


@given(st.dictionaries(st.text(max_size=20), st.text(max_size=60) | st.none() | st.integers(),
                       max_size=5))
def test_yaml_output_reads_back_exactly(value: dict[str, object]) -> None:
    """Any text (trailing spaces, control characters, lone newlines) survives
    the block-scalar choice: PyYAML falls back to a quoted style when needed."""
    assert yaml.safe_load(render(value, "yaml") + "\n") == (value or {})
