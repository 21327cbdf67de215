"""KFP v2 components, one module per stage. Each is thin: inputs -> one genrec stage call -> outputs.

Each module holds the component's plain Python function; `build_components` turns them into KFP
components for the images a pipeline is compiled for, so the image is a setting
(`genrec compile --image ...`), not a constant in code. The images (docker/) have genrec and kfp
installed, so components install nothing at start (install_kfp_package=False) and import genrec
inside the function, as KFP requires.
"""

from dataclasses import dataclass

from kfp import dsl

from genrec.cluster_config import default_gpu_image, default_image
from components.align import align
from components.assign_sids import assign_sids
from components.embed_items import embed_items
from components.evaluate import evaluate
from components.finish_run import finish_run
from components.gate_and_register import gate_and_register
from components.ingest import ingest
from components.sessionize import sessionize
from components.train_reward import train_reward
from components.train_sft import train_sft
from components.validate_events import validate_events
from components.validate_pages import validate_pages

# What `make image` / `make image-gpu` tag (docker/Dockerfile, docker/Dockerfile.gpu) at this package version.
DEFAULT_IMAGE = default_image()
DEFAULT_GPU_IMAGE = default_gpu_image()

FUNCTIONS = (ingest, validate_events, sessionize, validate_pages, embed_items, assign_sids, train_sft, train_reward,
             align, evaluate, gate_and_register, finish_run)



@dataclass(frozen=True)
class Images:
    """The container images a compiled pipeline names."""

    cpu: str = DEFAULT_IMAGE
    """Image of every task (docker/Dockerfile); of the training tasks too when `gpu` is empty."""
    gpu: str = ""
    """Image of the GPU tasks (docker/Dockerfile.gpu); empty: the CPU image."""
    gpu_tasks: tuple[str, ...] = ("train_sft", "align")
    """The tasks that run in `gpu` (cluster.gpu.tasks)."""

    def for_task(self, name: str) -> str:
        return self.gpu if self.gpu and name in self.gpu_tasks else self.cpu

    @classmethod
    def resolve(cls, cluster, image: str = "", gpu_image: str = "") -> "Images":
        """The images of a config's `cluster` section, command-line flags first. GPU tasks get the GPU image when one
        is named or when the cluster gives them GPUs."""
        gpu = gpu_image or cluster.gpu_image or (DEFAULT_GPU_IMAGE if cluster.gpu.count else "")
        # A task that only watches its TrainJob runs in the CPU image; the TrainJob's pods get the GPU image.
        return cls(image or cluster.image or DEFAULT_IMAGE, gpu,
                   tuple(t for t in cluster.gpu.tasks if not cluster.watches_trainjob(t)))


def build_components(images: Images) -> dict:
    """The pipeline's KFP components by function name, each naming its image."""
    return {fn.__name__: dsl.component(base_image=images.for_task(fn.__name__), install_kfp_package=False)(fn)
            for fn in FUNCTIONS}
