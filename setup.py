from setuptools import find_packages, setup

setup(
    name="ranke_trl",
    version="0.1.0",
    description="RankE: co-evolving the VQ decoder with GRPO for discrete autoregressive text-to-image models, on TRL.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ranke_trl", "ranke_trl.*", "shapes_world", "shapes_world.*"]),
    install_requires=[
        "torch>=2.4",
        "torchvision",
        "transformers==5.24.*",
        "trl==1.16.*",
        "accelerate>=1.10",
        "datasets>=3.0",
        "peft>=0.17",
        "open_clip_torch>=3.0",
        "torchmetrics>=1.5",
        "torch-fidelity",
        "lpips>=0.1.4",
        "safetensors",
        "huggingface_hub",
        "pyyaml",
        "tqdm",
        "filelock",
        "pillow",
        "scipy",
    ],
    extras_require={
        "deepspeed": ["deepspeed>=0.17"],
        "tensorboard": ["tensorboard"],
        "shapes": ["matplotlib"],  # ShapesWorld's experiment figures
        "dev": ["pytest>=8", "pytest-xdist>=3", "tensorboard", "deepspeed>=0.17", "matplotlib"],
    },
    entry_points={
        "console_scripts": ["ranke-trl=ranke_trl.cli:main"],
        # ShapesWorld (shapes_world/) is a plugin of the library, registered as a third-party package would be
        "ranke_trl.plugins": ["shapes_world = shapes_world.plugin:register"],
    },
)
