"""Print genrec's dependencies from pyproject.toml, one per line, for the images' dependency layer.

The images install the dependencies before the project code, so that a code change does not reinstall torch.
usage: python3 docker/requirements.py pyproject.toml [--exclude NAME ...] [--extra NAME]
  --extra NAME: the optional dependencies NAME instead (the MLflow server image installs --extra server).
"""

import argparse
import re
import tomllib

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("pyproject")
parser.add_argument("--exclude", nargs="*", default=[], help="distribution names to leave out (installed separately)")
parser.add_argument("--extra", default="", help="print this optional-dependencies group instead of the dependencies")
args = parser.parse_args()
with open(args.pyproject, "rb") as f:
    project = tomllib.load(f)["project"]
deps = project["optional-dependencies"][args.extra] if args.extra else project["dependencies"]
for dep in deps:
    if re.split(r"[\s<>=!~;\[]", dep, maxsplit=1)[0].lower() not in args.exclude:
        print(dep)
