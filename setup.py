"""Which packages the wheel holds: every package under morph/, refine/ and cli/, found in the tree
(a package added there needs no line here), and data/ as ``ganfaces_data``. The rest of the
metadata is in pyproject.toml."""
from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["morph", "morph.*", "refine", "refine.*", "cli", "cli.*"]), "ganfaces_data"])
