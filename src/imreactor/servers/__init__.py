"""The servers: one package per role, each with a thin ``main``."""
