"""Which MIL ops do the real speech models emit? Writes ``tests/data/op_inventory.json``; see
:mod:`conversions.op_inventory` (the wrappers and the conversion live there, where the tests import them)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conversions.op_inventory import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
