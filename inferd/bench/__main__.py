"""`python -m inferd.bench ...`: the bench CLI without going through `inferd`."""

from inferd.bench.cli import main

raise SystemExit(main())
