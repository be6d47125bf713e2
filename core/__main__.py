"""``python -m core`` is the ``mixq`` command."""
import sys

from core.cli import main

sys.exit(main())
