"""``python -m seedstory_client.batch``: the ``seedstory-batch`` command (:func:`seedstory_client.batch.cli.main`)."""

import sys

from .cli import main

sys.exit(main())
