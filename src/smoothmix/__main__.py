"""``python -m smoothmix`` (and ``torchrun -m smoothmix``) runs the command line."""

import sys

from smoothmix.cli import main

sys.exit(main())
