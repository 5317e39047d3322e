"""e2e fixtures live in e2e/tests/conftest.py; the session hooks that start and stop the real
clusters are in the root conftest.py."""
