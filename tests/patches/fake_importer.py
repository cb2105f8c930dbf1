"""Holds a stale ``from X import name`` copy, as SGLang modules do."""

from tests.patches.fake_targets import greet  # noqa: F401
