import pytest


@pytest.fixture(scope="session")
def built_models():
    """Each zoo model built once per session (into the session's MIXQ_CACHE_DIR, see tests/conftest.py)."""
    from core import zoo

    return {name: zoo.build(name) for name in zoo.list_models()}
