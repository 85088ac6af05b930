"""`python -m apl_core ...`: see apl_core.cli."""
from .cli import main

raise SystemExit(main())
