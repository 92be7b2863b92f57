"""`python -m brainseg …` (also what `torchrun -m brainseg …` runs)."""

from __future__ import annotations

from brainseg.cli import main

raise SystemExit(main())
