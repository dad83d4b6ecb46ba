"""The public surface is exactly ``aipc.__all__``; every public name is documented."""

from __future__ import annotations

import asyncio
import inspect

import pytest

import aipc

pytestmark = pytest.mark.anyio


def test_all_matches_public_names() -> None:
    public = {
        name
        for name, obj in vars(aipc).items()
        if not name.startswith("_") and not inspect.ismodule(obj)
    } - {"annotations", "sys"}
    assert public == set(aipc.__all__)
    assert len(aipc.__all__) == len(set(aipc.__all__))


@pytest.mark.parametrize("name", aipc.__all__)
def test_public_name_has_docstring(name: str) -> None:
    obj = getattr(aipc, name)
    if isinstance(obj, int):
        return  # constants are documented in their module and docs/
    assert inspect.getdoc(obj), f"aipc.{name} has no docstring"
    if inspect.isclass(obj):
        for attr, member in vars(obj).items():
            if attr.startswith("_") or not callable(member):
                continue
            assert inspect.getdoc(member), f"aipc.{name}.{attr} has no docstring"


async def test_uvloop_case_really_runs_uvloop(backend_id: str) -> None:
    """Guard: the "uvloop" parameter must not silently fall back to asyncio."""
    if backend_id == "trio":
        import sniffio

        assert sniffio.current_async_library() == "trio"
        return
    loop = asyncio.get_running_loop()
    is_uvloop = type(loop).__module__.startswith("uvloop")
    assert is_uvloop == (backend_id == "uvloop")
