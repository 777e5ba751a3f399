"""The web layer: the Starlette app, its endpoints, serving and metrics."""
