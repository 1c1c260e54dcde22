"""The storage conformance suite's fixtures: every test runs once per backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest

from perdure.storage import Storage
from tests.storage.factories import open_storage


@pytest.fixture
async def storage(backend_url: str) -> AsyncIterator[Storage]:
    """An open, migrated Storage on a private database of the parametrized backend."""
    async with open_storage(backend_url) as opened:
        yield opened


@pytest.fixture
def other_storage(
    backend_url: str, storage: Storage
) -> Callable[[], AbstractAsyncContextManager[Storage]]:
    """Opens another Storage on the same database (as another process would); skips on
    `memory://`, whose database is private to one connection."""
    if not storage.is_shared:
        pytest.skip("an in-memory database cannot be shared by two Storage instances")
    return lambda: open_storage(backend_url)
