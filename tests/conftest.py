"""Fixtures shared across test modules (session-scoped: made once per test run)."""

from __future__ import annotations

import os
import random
import shutil

import numpy as np
import pytest
import torch

# The per-family int8 matrix of the tiny models is the suite's heaviest part (an ExecuTorch int8 lowering of one
# tiny model takes one to two minutes here, nearly all of it in ExecuTorch's own passes). `make test` keeps the
# int8 cells of three families: a convnet, the hybrid the project is named after and a class-token transformer;
# the other families' int8 cells are marked `matrix` and run with `make test-full` (every family's fp32 cells,
# and full-size int8 conversions of every model in benchmarks/convert_all.py, stay as they are).
INT8_KEPT = {"mobilenetv3_tiny", "mobilevit_tiny", "deit_test"}
INT8_MATRIX_TESTS = {"test_int8_matches_quantized_pytorch", "test_int8_tiny_models_pass_against_quantized_pytorch"}


def pytest_collection_modifyitems(config, items) -> None:
    """Mark the int8 cells of the families outside ``INT8_KEPT`` as ``matrix``."""
    for item in items:
        spec = getattr(item, "callspec", None)
        if (getattr(item, "originalname", None) in INT8_MATRIX_TESTS and spec is not None
                and spec.params.get("name") not in INT8_KEPT):
            item.add_marker(pytest.mark.matrix)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same random state, whatever ran before it on its xdist worker (the
    order differs from run to run) or in which order pytest-randomly put it."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def require_tool(tool: str, package: str) -> None:
    """Skip when the system tool ``tool`` is missing, naming the Debian package that provides it; under CI
    (``CI=true``, set by .ci/run after ``make system-deps``) fail instead, so CI never skips silently."""
    if shutil.which(tool) is None:
        message = f"needs {tool}: apt-get install {package} (or make system-deps)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def needs():
    """``needs(tool, package)``: :func:`require_tool` for a test."""
    return require_tool


@pytest.fixture(scope="session", autouse=True)
def _runner_cache(tmp_path_factory) -> None:
    """Native runners build into one cache shared by the xdist workers of this run (not the user's)."""
    if "MOBILEVITS_CACHE" not in os.environ:
        os.environ["MOBILEVITS_CACHE"] = str(tmp_path_factory.getbasetemp().parent / "mobilevits-cache")


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


@pytest.fixture(scope="session")
def artifact(tmp_path_factory):
    """Session-wide artifact factory: ``artifact(model, to, precision, resolution=None, check=False, **kw)``
    converts each (model, backend, precision, resolution, options) once per test run (per xdist worker)
    and returns ``convert``'s result; ``check=True`` adds the host check (run once, then kept).

    Every test that only reads an artifact shares it; a test that breaks or rewrites one copies it first
    (or converts its own into ``tmp_path``). Tiny configs at their smallest resolution by default.
    """
    import mobilevits
    from converters import check_artifact, convert

    out = tmp_path_factory.mktemp("artifacts")
    cache: dict[tuple, dict] = {}

    def get(model: str, to: str, precision: str = "fp32", resolution: int | None = None, check: bool = False,
            **options) -> dict:
        resolution = resolution or mobilevits.get_model_info(model).min_resolution
        options.setdefault("num_classes", 10)
        key = (model, to, precision, resolution, tuple(sorted((k, repr(v)) for k, v in options.items())))
        if key not in cache:
            folder = out / f"a{len(cache)}"  # options may change the artifact but not its file name
            cache[key] = convert(model, to=to, precision=precision, resolution=resolution, out=folder,
                                 check=check, show_progress=False, **options)
        result = cache[key]
        if check and result["check"] is None:
            result["check"] = check_artifact(result["artifact"], show_progress=False)
        return result

    return get
