"""Flower ClientApp (client_app.py), the site launcher (run.py) and its preflight checks."""
