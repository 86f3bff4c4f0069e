"""The HTTP side of the node: health, metrics, worklist API and page, STOW-RS input.

``app`` holds the routes, ``server`` runs them with uvicorn inside ``medgemma-node
serve``; ``worklist``, ``images`` and ``stow`` do the work behind the routes, and
``urgency`` decides which AI findings put a study at the top of the list.
"""
