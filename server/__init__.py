"""The platform hub: one authoritative, versioned platform state for every tab."""

__version__ = "0.1.0"
