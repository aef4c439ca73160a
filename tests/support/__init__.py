"""Shared builders for the tests (synthetic cases, protocols, stand-in tasks); no tests here."""
