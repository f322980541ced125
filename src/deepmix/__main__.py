"""``python -m deepmix``: the ``deepmix`` command (:func:`deepmix.cli.main.main`)."""

import sys

from deepmix.cli.main import main

sys.exit(main())
