"""``python -m evaluation.judge``: train and save the evaluation's fixed judge (see :mod:`evaluation.judge`)."""

import sys

from evaluation.judge import main

sys.exit(main())
