"""Repository conftest: the parity plugin for runs from a checkout that is not installed (installed, the plugin
comes through its ``pytest11`` entry point under the same name, so it is not registered twice), and a speed-up
for the hundreds of tiny conversions the tests make."""

from __future__ import annotations

import os

import pytest

# --backend, --export-dir, --report-dir, family options, hypothesis profiles, parametrization, the report.
pytest_plugins = ["conversions.pytest_plugin"]

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
