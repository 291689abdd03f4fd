"""Hydra finds sweepers in the ``hydra_plugins`` package only: mtrec's live here."""
