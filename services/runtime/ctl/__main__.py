"""``python -m services.runtime.ctl`` is ``consenttrace``."""

import sys

from services.runtime.ctl.app import main

sys.exit(main())
