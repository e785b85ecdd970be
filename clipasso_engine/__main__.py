"""`python -m clipasso_engine ...` is the `clipasso` command (the extension runs it this way)."""

import sys

from .cli import main

sys.exit(main())
