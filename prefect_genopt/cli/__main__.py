"""``python -m prefect_genopt.cli``: the ``genopt`` command."""

from prefect_genopt.cli import main

raise SystemExit(main())
