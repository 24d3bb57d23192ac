"""Print the requirements of pyproject.toml's common dependencies plus the named extras, one per line.

The image builds install from this (deploy/Dockerfile) before copying the code, so that code changes do not
reinstall the dependencies: `python requirements-of.py gateway > requirements.txt`.
"""

import sys
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
print("\n".join(project["dependencies"] + [dep for extra in sys.argv[1:] for dep in extras[extra]]))
