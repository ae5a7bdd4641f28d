"""`python -m unlearn.reproduce TABLE [options]`: the same as `python -m unlearn reproduce TABLE [options]`."""
import sys

from unlearn.reproduce import main

sys.exit(main())
