"""``python -m producer init | service | relay | status``: see producer/cli.py."""

import sys

from producer.cli import main

sys.exit(main())
