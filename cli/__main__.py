"""``python -m cli ...`` = ``adaptiveclick ...`` (also what ``torchrun -m cli train ...`` runs)."""

from . import main

raise SystemExit(main())
