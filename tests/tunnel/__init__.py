"""Tests of the tunnel package."""
