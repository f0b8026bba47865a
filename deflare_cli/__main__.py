"""``python -m deflare_cli`` runs the ``deflare`` command (also under ``torchrun``)."""

from .cli import main

main()
