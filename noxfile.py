"""nox sessions: tests (all three backends), lint, typecheck, bench."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite; every async test runs on asyncio, uvloop and trio."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check (with the banned-import rule that keeps loops in _core) and format."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[test,bench]", "mypy")
    session.run("mypy", "--strict", "aipc")


@nox.session
def bench(session: nox.Session) -> None:
    """aipc bench beside its peers; pass options after --, e.g. -- --backend all."""
    session.install(".[bench]")
    session.run("aipc", "bench", *session.posargs)
