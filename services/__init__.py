"""Service packages: one per service (wiring in __main__, pure domain logic beside it)."""
