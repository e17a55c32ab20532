"""The baselines hold on any CPU: a representative slice of the generated suite, run again in a fresh process under
torch's other kernels (``ATEN_CPU_CAPABILITY=default``, as a CPU without AVX2/AVX512 picks them) and with another
torch thread count, must pass against the same pinned baselines.

Why a slice and not everything: the whole profile takes minutes; these are the figures that moved before the rule
for pinned figures (``conversions/parity.py``) and the committed tiny Parakeet weights: fp32 PSNRs at the rounding
floor (Silero's 256 ms probability: 146.8 vs 144.5 dB), an fp32 encoder, the fp16 joint's probabilities, and
quantization entries of a model that used to be fitted at test time (palettization, the mixed recipe's size). The
exports are shared with this session's cache (the packages do not depend on the kernels; only the checks do).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SLICE = ("(silero-vad and (unified-256ms or decoder) and test_parity[) "
         "or (parakeet-tdt-v3 and (encoder/mil or joint-decision/mil or joint/mil) and test_parity[) "
         "or (parakeet-tdt-v3/decoder and (palettize-4bit/ or mixed/) and test_quantization[)")


def _run_slice(pytestconfig, env_extra: dict, *args: str) -> subprocess.CompletedProcess:
    from conversions.pytest_plugin import export_dir
    from conversions.testing import clean_subprocess_env

    # Only the built-in families (COREML_PARITY_FAMILY_MODULES dropped): the slice checks their pinned baselines.
    env = clean_subprocess_env({**env_extra, "CI": "true", "TQDM_DISABLE": "1", "COREML_PARITY_FAMILY_MODULES": None})
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "--backend", "mil", "--export-dir", str(export_dir(pytestconfig)), "--report-dir",
                           str(Path(env["SLICE_REPORT"])), *args, "-k", SLICE, "tests/test_parity.py",
                           "tests/test_quantization.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1800)


@pytest.mark.parametrize("capability, threads", [("default", "1"), (None, "2")],
                         ids=["ATEN_CPU_CAPABILITY=default", "torch-threads-2"])
def test_baselines_hold_under_other_kernels_and_thread_counts(pytestconfig, tmp_path, capability, threads):
    pytest.importorskip("nemo.collections.asr", reason="the slice includes Parakeet: pip install -e '.[parakeet]'")
    env = {"SLICE_REPORT": str(tmp_path / "report")}
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    done = _run_slice(pytestconfig, env, "--torch-threads", threads)
    tail = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, tail
    summary = done.stdout.strip().splitlines()[-1]
    passed = int(summary.split(" passed")[0].split()[-1]) if " passed" in summary else 0
    assert passed >= 12, f"the slice ran too few checks ({summary})"
