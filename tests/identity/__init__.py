"""Tests of the identity package (token validation against the sandbox issuer)."""
