"""pytest plugin of coreml-parity: options and fixtures shared by every test."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# --backend, --export-dir, --report-dir, the parity_* parametrization, the export-once session, the report.
pytest_plugins = ["conversions.pytest_plugin"]

# Conversions take ~0.1-1 s each: hypothesis examples are few and have no deadline.
settings.register_profile("default", max_examples=8, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("thorough", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# CI: the same examples on every run (a red CI must be reproducible); locally, new examples each run.
settings.register_profile("ci", max_examples=8, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default"))

os.environ.setdefault("TQDM_DISABLE", "1")  # coremltools' conversion progress bars would flood the logs


@pytest.fixture(autouse=True, scope="session")
def _no_gc_in_ct_convert():
    """``ct.convert`` ends with a full ``gc.collect()`` (~0.3 s once torch is loaded): most of a small test
    conversion. Tests convert hundreds of tiny modules, so skip it; memory is reclaimed by the normal gc."""
    from types import SimpleNamespace

    from coremltools.converters import _converters_entry

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_converters_entry, "gc", SimpleNamespace(collect=lambda *args: 0))
        yield
