"""SAM2 side of the project: mask geometry, the SAM2 engine, its Ray actor pool and client.

Importing this package imports neither torch nor ``sam2``, so the answer parser and the box and point checks stay
cheap. ``sam2`` is imported only through :mod:`reward_server.sam2_build`, which undoes its Hydra side effect.
"""
