"""``python -m fwplab``: the ``fwplab`` command (also under ``torchrun -m fwplab``)."""

from .cli import main

raise SystemExit(main())
