"""Fixtures shared across test modules (session-scoped: made once per test run)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def digits_weights(tmp_path_factory) -> str:
    """``mobilevit_tiny`` at 96 px trained on digits to about 95% top-1 (5 epochs, about 20 s here).

    A trained model is what makes int8 checks and QAT ledgers mean something: on a random init the
    logits barely depend on the image, so top-1 agreement is trivially 100%.
    """
    from mobilevits.workflows.training import train

    out = tmp_path_factory.mktemp("digits_weights")
    r = train("mobilevit_tiny", resolution=96, epochs=5, out=out, show_progress=False, log=lambda s: None)
    return r["weights"]
