"""``python -m training.judge``: train and save the evaluation's fixed judge (see :mod:`training.judge`)."""

import sys

from training.judge import main

sys.exit(main())
