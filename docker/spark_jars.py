"""Fetch the s3a jars for pyspark's Hadoop into a folder (docker/Dockerfile.spark runs this while it builds).

hadoop-aws must be the version of the Hadoop client Spark ships (its jar name says which), and the AWS SDK bundle the
one hadoop-aws was built against (its POM's parent, hadoop-project, declares it). Each jar is checked against the
.sha1 Maven publishes beside it.

    python docker/spark_jars.py --into "$SPARK_HOME/jars" [--maven URL] [--aws-sdk-version V]
"""

import argparse
import hashlib
import re
import sys
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        return response.read()


def artifact(maven: str, group: str, name: str, version: str, ext: str) -> str:
    return f"{maven}/{group.replace('.', '/')}/{name}/{version}/{name}-{version}.{ext}"


def hadoop_version(jars: Path) -> str:
    found = sorted(jars.glob("hadoop-client-api-*.jar"))
    if not found:
        sys.exit(f"no hadoop-client-api-*.jar in {jars}: is this pyspark's jars folder?")
    return re.search(r"hadoop-client-api-(.+)\.jar", found[0].name).group(1)


def sdk_version(maven: str, hadoop: str) -> str:
    """The aws-java-sdk-v2 version hadoop-project's POM declares for this Hadoop."""
    pom = ET.fromstring(fetch(artifact(maven, "org.apache.hadoop", "hadoop-project", hadoop, "pom")))
    for prop in ("aws-java-sdk-v2.version", "aws-java-sdk.version"):
        node = pom.find(f"m:properties/m:{prop}", NS)
        if node is not None and node.text:
            return node.text.strip()
    sys.exit(f"hadoop-project {hadoop}: no aws-java-sdk-v2.version property; pass --aws-sdk-version")


def download(maven: str, group: str, name: str, version: str, into: Path) -> Path:
    data = fetch(artifact(maven, group, name, version, "jar"))
    expected = fetch(artifact(maven, group, name, version, "jar.sha1")).decode().split()[0]
    if hashlib.sha1(data).hexdigest() != expected:
        sys.exit(f"{name}-{version}.jar: SHA-1 does not match Maven's ({expected})")
    target = into / f"{name}-{version}.jar"
    target.write_bytes(data)
    print(f"{target} ({len(data) / 1e6:.1f} MB, sha1 ok)")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--into", type=Path, required=True, help="pyspark's jars folder")
    parser.add_argument("--maven", default="https://repo1.maven.org/maven2", help="Maven repository URL")
    parser.add_argument("--aws-sdk-version", default="", help="AWS SDK v2 bundle version [what Hadoop declares]")
    args = parser.parse_args()
    hadoop = hadoop_version(args.into)
    sdk = args.aws_sdk_version or sdk_version(args.maven, hadoop)
    download(args.maven, "org.apache.hadoop", "hadoop-aws", hadoop, args.into)
    download(args.maven, "software.amazon.awssdk", "bundle", sdk, args.into)


if __name__ == "__main__":
    main()
