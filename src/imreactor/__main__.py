"""``python -m imreactor`` is the ``imreactor`` command."""

import sys

from .cli import main

sys.exit(main())
