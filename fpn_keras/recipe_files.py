"""Recipe files: where recipes are found (recipes/ or a wheel's share folder) and how
`base:` references between them are merged. Validation is `fpn_keras.config`'s."""

import copy
import os
import sys

import yaml

from fpn_keras import config


def recipes_dir():
    """The recipes folder: the repository's (source checkout, editable install)
    or the one a wheel installs under <prefix>/share/fpn_keras/recipes."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.path.join(os.path.dirname(here), "recipes"),
                  os.path.join(sys.prefix, "share", "fpn_keras", "recipes"),
                  os.path.join(sys.base_prefix, "share", "fpn_keras", "recipes")]
    for candidate in candidates:
        if os.path.isdir(candidate):
            return candidate
    return candidates[0]


def available_recipes():
    folder = recipes_dir()
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) if os.path.isdir(folder) else []


def resolve_recipe_path(name_or_path, relative_to=None):
    """A path (relative to `relative_to` first, then the working directory) or a recipe
    name in recipes/ (".yaml" optional) -> the file's path."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise config.RecipeError(f"a recipe name or path is needed, received {name_or_path!r}")
    filename = name_or_path + ("" if name_or_path.endswith((".yaml", ".yml")) else ".yaml")
    candidates = []
    if relative_to is not None:
        candidates += [os.path.join(relative_to, name_or_path), os.path.join(relative_to, filename)]
    candidates += [name_or_path, os.path.join(recipes_dir(), filename)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    available = available_recipes()
    raise config.RecipeError(f"no recipe {name_or_path!r}{config.suggest(name_or_path, available)}: not a file, "
                      f"and not one of {available}")


def read_yaml(path):
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as error:
            message = " ".join(str(error).split())
            raise config.RecipeError(f"{path}: not valid YAML: {message}") from error
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise config.RecipeError(f"{path}: a recipe must be a mapping with sections {sorted(config.SECTIONS)}")
    return data


def deep_merge(base, override):
    """Mappings merge key by key (recursively); anything else in `override` replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_base(name, source, chain):
    """The recipe `name` referenced from `source`, bases merged and validated (errors name it)."""
    if not isinstance(name, str) or not name:
        raise config.RecipeError(f"{source}: '{config.BASE_KEY}' must be a recipe name or path, received {name!r}")
    try:
        path = resolve_recipe_path(name, relative_to=os.path.dirname(source) if chain else None)
    except config.RecipeError as error:
        raise config.RecipeError(f"{source}: {config.BASE_KEY}: {error}") from None
    if os.path.realpath(path) in chain:
        names = " -> ".join(os.path.basename(p) for p in chain + (path,))
        raise config.RecipeError(f"{source}: '{config.BASE_KEY}' recipes form a cycle: {names}")
    parent = resolve_base(read_yaml(path), path, chain)
    config.recipe_from_dict(parent, source=path, required=False)
    return parent


def resolve_base(data, source="<dict>", _chain=()):
    """Merges the recipes named by `base:` keys into `data` (recursively); `data` wins.

    - top level, `base: NAME`: start from the whole recipe NAME;
    - inside a section, e.g. `data: {base: NAME, ...}`: start that section from NAME's
      section (replacing the section a top-level base would give).
    NAME is a recipe name (in recipes/) or a path (relative to the referencing file
    first). Mappings merge key by key (`model: {backbone: resnet101}` changes only the
    backbone); lists and scalars replace. Each base file is validated on its own (errors
    name it); a cycle of bases is an error.
    """
    if not isinstance(data, dict):
        return data
    chain = _chain + ((os.path.realpath(source),) if os.path.isfile(source) else ())
    data = dict(data)
    sections = {}
    for name in config.SECTIONS:
        section = data.get(name)
        if isinstance(section, dict) and config.BASE_KEY in section:
            section = dict(section)
            parent = load_base(section.pop(config.BASE_KEY), source, chain).get(name) or {}
            sections[name] = deep_merge(parent, section)
            del data[name]
    if config.BASE_KEY in data:
        data = deep_merge(load_base(data.pop(config.BASE_KEY), source, chain), data)
    data.update(sections)
    return data
