"""The console tests' fixtures (``site``, ``module_site``, ``pty_console``), from ``kit``."""

from tests.console.kit import module_site_fixture, pty_console_fixture, site_fixture

__all__ = ["module_site_fixture", "pty_console_fixture", "site_fixture"]
