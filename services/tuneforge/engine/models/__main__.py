"""``python -m tuneforge.engine.models import ...``: register a base model in the object store."""

import sys

from tuneforge.engine.models.registry import main

sys.exit(main())
