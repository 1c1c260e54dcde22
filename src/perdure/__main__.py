"""`python -m perdure …` runs the command line, like the `perdure` script."""

from perdure.cli.main import main

raise SystemExit(main())
