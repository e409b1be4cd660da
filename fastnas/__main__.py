"""``python -m fastnas ...`` (what torchrun launches: ``torchrun ... -m fastnas train ...``)."""

import sys

from fastnas.cli import main

sys.exit(main())
