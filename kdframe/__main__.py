"""``python -m kdframe``: the same as the ``kdframe`` command."""

from kdframe.cli import main

raise SystemExit(main())
