"""The experiment config, in layers that import only downwards:

- `schema`: the typed, frozen sections (pydantic); imports nothing of the project but the VGG layer names;
  its `eval` section lives in `eval_schema`, and the sections' base class in `frozen`.
- `load`: YAML, presets and dotted overrides -> a validated config; method options through the method registry.
- `identity`: what decides a run's result, and its hash.
- `project`: named YAML files of the checkout (ablations/, search_spaces/) and their `base:` section.

Import the module you need; this package imports none of them, so the schema stays free of method code.
"""
