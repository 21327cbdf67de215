"""KFP v2 components, one module per stage. Each is thin: inputs -> one genrec stage call -> outputs.

The image (docker/Dockerfile.cpu) has genrec and kfp installed, so components install nothing at
start (install_kfp_package=False) and import genrec inside the function, as KFP requires.
"""

# The runtime image every CPU component runs in; build it from docker/Dockerfile.cpu.
CPU_IMAGE = "ghcr.io/genrec/genrec-cpu:0.1.0"
