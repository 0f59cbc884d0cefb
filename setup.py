from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec(Path("bt_keras/version.py").read_text(), version)

setup(
    name="bt_keras",
    version=version["__version__"],
    description="Barlow Twins self-supervised learning for TensorFlow / Keras 3, exact across replicas.",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["bt_keras", "bt_keras.*"]),
    install_requires=[
        "tensorflow>=2.20,<2.22",
        "keras>=3.10",
        "tensorflow-datasets>=4.9",
        "onnx>=1.16",
        "tf2onnx>=1.16",
        "onnxruntime>=1.18",
        "pyyaml>=6.0",
        "tensorboard>=2.20",
        "numpy",
        "scikit-learn>=1.3",
        "matplotlib>=3.7",
    ],
    extras_require={
        "jax": ["jax>=0.4.30"],
        "keras_hub": ["keras-hub>=0.20"],
        "litert": ["ai-edge-litert>=1.2"],
        # The nearest-neighbour index of bt-embed / bt-search (bt_keras.embed.index).
        "index": ["faiss-cpu>=1.8"],
        # bt-embed / bt-data --runner. Plain apache-beam (protobuf 6.x, in TF 2.21's range); Dataflow and Beam's
        # own gs:// IO need apache-beam[gcp] (images are read through tf.io.gfile, which reads gs:// already).
        "beam": ["apache-beam>=2.60"],
        "dev": [
            "faiss-cpu>=1.8",
            "apache-beam>=2.60",
            "jax>=0.4.30",
            "ai-edge-litert>=1.2",
            "keras-hub>=0.20",
            "pytest>=8",
            "pytest-xdist>=3.8",  # --no-loadscope-reorder (pyproject addopts)
            "pillow>=10",
            "ruff>=0.6",
            # The official client's protos: tests read the SavedModel's warm-up records as PredictionLogs.
            "tensorflow-serving-api>=2.20,<2.22",
            # The docs toolchain, pinned: CI and users build the same site (mkdocs.yml has strict: true).
            "mkdocs==1.6.1",
            "mkdocs-material==9.8.2",
            "mkdocs-autorefs==1.4.5",
            "mkdocstrings==1.0.8",
            "mkdocstrings-python==2.0.11",
            "griffelib==2.4.1",
        ],
    },
    entry_points={
        "console_scripts": [
            "bt-train=bt_keras.cli.train:main",
            "bt-eval=bt_keras.cli.eval:main",
            "bt-export=bt_keras.cli.export:main",
            "bt-data=bt_keras.cli.data:main",
            "bt-embed=bt_keras.cli.embed:main",
            "bt-data-service=bt_keras.cli.data_service:main",
            "bt-search=bt_keras.cli.search:main",
        ]
    },
)
