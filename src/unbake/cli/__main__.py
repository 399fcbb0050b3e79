"""``python -m unbake.cli``: the ``unbake`` command (the REST service starts its worker so)."""

from unbake.cli import main

main()
