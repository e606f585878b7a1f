"""``python -m pipeline --input_files=GLOB --warehouse=duckdb:PATH [Beam flags]``"""

import sys

from pipeline.run import main

sys.exit(main())
