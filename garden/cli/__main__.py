"""`python -m garden.cli`: the same as the `garden` command."""

import sys

from garden.cli import main

sys.exit(main())
