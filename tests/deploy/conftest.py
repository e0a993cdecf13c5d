from __future__ import annotations

import pytest

from scripts import get_helm


@pytest.fixture(scope="session")
def helm() -> str:
    # A missing helm is fetched (the script is pinned by URL and SHA-256); if that fails, the
    # tests fail with the script's reason: never a skip.
    return str(get_helm.get_helm())
