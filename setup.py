"""Packaging glue that pyproject.toml cannot express: the top-level `configs/`
directory (recipes and DeepSpeed configs) ships inside the wheel as
`korani_cli/configs/`. One source of truth — the files are mapped, not copied
into the tree; `korani_cli.train.presets` finds them in either place."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["korani_cli", "korani_cli.*"]) + ["korani_cli.configs"],
    package_dir={"korani_cli.configs": "configs"},
    package_data={"korani_cli": ["py.typed"], "korani_cli.configs": ["*.yaml", "*.json"]},
)
