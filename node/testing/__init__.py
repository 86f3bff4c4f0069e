"""For tests and demos only: the tiny Gemma 3 test checkpoint.

Nothing here runs unless a configuration asks for it (``model.engine: test``); a node
configured for MedGemma never falls back to it.
"""
