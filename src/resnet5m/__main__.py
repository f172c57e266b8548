"""`python -m resnet5m` (and `torchrun -m resnet5m`) run the CLI."""

import sys

from .cli import main

sys.exit(main())
