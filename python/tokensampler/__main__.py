"""`python -m tokensampler ...` runs the command line (see `tokensampler.cli`)."""

from .cli import main

raise SystemExit(main())
