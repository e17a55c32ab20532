"""Benchmark gate: this checkout's latency benchmarks vs a base commit's, measured here in alternated blocks.

    python scripts/bench_gate.py --base origin/main -k silero          # or: tox -e bench-gate -- --base ...
    python scripts/bench_gate.py --base HEAD~1 --head HEAD --blocks 8 --json build/bench-gate.json

Exit status 0 (no regression beyond the noise), 1 (a regression), 2 (usage or setup error). The logic lives in
``conversions/bench_gate.py``; see docs/ci.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run from a checkout without installing: this checkout's gate, whatever `conversions` is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conversions.bench_gate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
