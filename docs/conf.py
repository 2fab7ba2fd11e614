"""Sphinx configuration for the flask-celerymon docs."""

project = "flask-celerymon"
author = "flask-celerymon developers"
release = "0.1.0.dev0"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx"]
intersphinx_mapping = {}
exclude_patterns = ["_build", "grafana", "prometheus"]
html_theme = "alabaster"
autodoc_member_order = "bysource"
