"""Print genrec's dependencies from pyproject.toml, one per line, for the images' dependency layer.

The images install the dependencies before the project code, so that a code change does not reinstall torch.
usage: python3 docker/requirements.py pyproject.toml [--exclude NAME ...]
"""

import argparse
import re
import tomllib

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("pyproject")
parser.add_argument("--exclude", nargs="*", default=[], help="distribution names to leave out (installed separately)")
args = parser.parse_args()
with open(args.pyproject, "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
for dep in deps:
    if re.split(r"[\s<>=!~;\[]", dep, maxsplit=1)[0].lower() not in args.exclude:
        print(dep)
