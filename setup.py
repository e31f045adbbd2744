from setuptools import setup

# Dataflow's --setup_file needs a setup.py; everything is declared in pyproject.toml.
setup()
