"""``python -m mobilevits``: the command line."""

from mobilevits.workflows.cli import main

raise SystemExit(main())
