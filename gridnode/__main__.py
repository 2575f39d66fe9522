"""``python -m gridnode`` is the ``gridnode`` command."""

from .cli import main

main()
