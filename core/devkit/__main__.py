"""``python -m core.devkit run MODEL.lm INPUTS.npz OUTPUTS.npz [--timing TIMING.json]``: the
devkit runtime (numpy only); see :mod:`core.devkit.runtime`."""
import sys

from core.devkit.runtime import main

if __name__ == "__main__":
    sys.exit(main())
