"""The recipes and DeepSpeed configs korani ships, found the same way in a
checkout and in an installed wheel.

The one source of truth is the top-level `configs/` directory. A wheel carries
it as `korani_cli/configs/` (setup.py maps that package directory onto
`configs/`), so an installed korani finds it beside its own code; a checkout
(or an editable install) has no such directory and finds `configs/` at the
repository root, one level above the package.

This module only locates and names files; reading and validating a recipe is
`train.config`'s job, and writing one out is `korani train init`'s.
"""

from __future__ import annotations

from pathlib import Path

from korani_cli.errors import ConfigError

DS_PREFIX = "ds_"
RECIPE_SUFFIX = ".yaml"


def configs_dir() -> Path:
    """The shipped `configs/` directory (inside the package when installed)."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


def recipe_names() -> list[str]:
    """Names of the shipped recipes: `korani-5.8b` for configs/korani-5.8b.yaml."""
    folder = configs_dir()
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(RECIPE_SUFFIX)] for p in folder.glob(f"*{RECIPE_SUFFIX}") if p.is_file())


def preset_path(name: str) -> Path | None:
    """The shipped recipe called `name` (with or without `.yaml`), or None.
    Only a bare name counts: `configs/korani-5.8b.yaml` is a path, not a preset."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    stem = name[: -len(RECIPE_SUFFIX)] if name.endswith(RECIPE_SUFFIX) else name
    if stem not in recipe_names():
        return None
    return configs_dir() / f"{stem}{RECIPE_SUFFIX}"


def presets_hint() -> str:
    names = recipe_names()
    if not names:
        return (
            "this korani has no shipped presets (its configs/ directory is missing); pass a YAML recipe file"
        )
    listed = ", ".join(names)
    return (
        f"shipped presets: {listed}; run one by name (korani train {names[0]}) "
        f"or write it out to edit (korani train init {names[0]} -o my-recipe.yaml)"
    )


def resolve_recipe(arg: str | Path) -> Path:
    """A recipe argument → the file to read. An existing path wins (a file the
    user wrote beats a preset of the same name); else a bare preset name; else
    a configuration error that lists the presets."""
    path = Path(arg).expanduser()
    if path.exists():
        return path
    preset = preset_path(str(arg))
    if preset is not None:
        return preset
    stem = path.name[: -len(path.suffix)] if path.suffix in (RECIPE_SUFFIX, ".yml") else path.name
    what = f"no recipe file {arg}"
    if stem in recipe_names() and str(arg) != stem:
        # `configs/korani-5.8b.yaml` typed outside the checkout: the preset is the likely intent.
        raise ConfigError(
            f"{what} here",
            f"the shipped preset of that name runs with: korani train {stem} (or korani train init {stem} -o "
            f"{path.name} to edit a copy)",
        )
    raise ConfigError(f"{what} and no shipped preset of that name", presets_hint())


def deepspeed_path(name: str) -> Path | None:
    candidate = configs_dir() / f"{DS_PREFIX}{name}.json"
    return candidate if name and "/" not in name and candidate.is_file() else None
