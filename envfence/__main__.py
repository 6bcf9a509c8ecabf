"""`python -m envfence`: the same as the `envfence` command."""

import sys

from envfence.cli import main

sys.exit(main())
