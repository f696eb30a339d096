"""`python -m gradsift` (also what `torchrun -m gradsift` runs)."""

import sys

from gradsift.cli.main import main

sys.exit(main())
