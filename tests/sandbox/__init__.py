"""Tests of the sandbox API server and its streaming parts."""
