"""``python -m arf.cli`` (and ``torchrun -m arf.cli train ...``) runs the ``arf`` command."""

import sys

from arf.cli import main

sys.exit(main())
