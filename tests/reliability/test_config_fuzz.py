"""Config fuzzing: every field of every pydantic config, broken one at a time, written as a TOML file.

For each model (site and run config, preprocessing, model, training, synthetic cohort) and each
field, reachable through nested tables and arrays of tables: a value of the wrong type, a value out
of its declared range or choices, the field removed when it is required, and an unknown key next to
it. Every case must be a ConfigError whose message names the file and the field's dotted path
(``<file>: privacy.epsilon: ...``), never another exception. The cases are derived from the models
themselves, so a field added later is fuzzed without touching this file.
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types as at
import pytest
from pydantic import BaseModel

from lsemvae.config import load_toml
from lsemvae.data.preprocess import PreprocessConfig
from lsemvae.data.synthetic import CohortSpec, load_cohort_spec
from lsemvae.errors import ConfigError
from lsemvae.model.config import PROFILES, ModelConfig
from lsemvae.site import FederationConfig, SiteConfig, load_federation_config, load_site_config
from lsemvae.train.augment import AugmentConfig
from lsemvae.train.baselines import ResNet1DConfig
from lsemvae.train.finetune import FinetuneConfig
from lsemvae.train.pretrain import PretrainConfig

SITE = {
    "name": "x", "leads": "6L", "state_dir": "state", "anchor_dir": "anchors",
    "data": {"format": "manifest", "root": "records", "labels": "labels.csv"},
    "tasks": [{"name": "right_heart", "column": "ph"}],
    "privacy": {"epsilon": 3.0},
    "connection": {"superlink": "127.0.0.1:8000", "root_certificates": "ca.crt", "auth_key": "site.key"},
}


def _drop_none(value: Any) -> Any:
    """TOML has no null: an absent key is how a file says None (the default)."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value


# (id, model, loader, a valid document). The loader is what the project calls on such a file.
MODELS: list[tuple[str, type[BaseModel], Any, dict]] = [
    ("site", SiteConfig, load_site_config, SITE),
    ("federation", FederationConfig, load_federation_config, FederationConfig().as_run_config()),
    ("cohort", CohortSpec, load_cohort_spec, {"seed": 1, "sites": [{"name": "a", "n_records": 10, "severity": [0.1, 0.9]}]}),
    ("preprocess", PreprocessConfig, None, PreprocessConfig().model_dump(mode="json")),
    ("model", ModelConfig, None,
     {**PROFILES["compact"].model_dump(mode="json"), "tasks": {"right_heart": {"kind": "binary", "n_outputs": 1}}}),
    ("pretrain", PretrainConfig, None, PretrainConfig().model_dump(mode="json")),
    ("finetune", FinetuneConfig, None, FinetuneConfig().model_dump(mode="json")),
    ("augment", AugmentConfig, None, {"crop_samples": 500, "scale_jitter": 0.1}),
    ("resnet1d", ResNet1DConfig, None, ResNet1DConfig(tasks={"right_heart": 1}).model_dump(mode="json")),
]


# --------------------------------------------------------------------------- TOML writing

def _toml_key(key: str) -> str:
    return key if key.replace("-", "").replace("_", "").isalnum() else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


def dump_toml(doc: dict) -> str:
    return "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in doc.items())


# --------------------------------------------------------------------------- walking the models

def _unwrap(annotation: Any) -> tuple[Any, list]:
    """Strip Annotated (keeping its constraints) and Optional."""
    meta: list = []
    while typing.get_origin(annotation) is typing.Annotated:
        annotation, *extra = typing.get_args(annotation)
        meta += extra
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])[0], meta + _unwrap(args[0])[1]
    return annotation, meta


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _accepts_text(t: Any) -> bool:
    if t in (str, Path):
        return True
    if typing.get_origin(t) is Literal:
        return any(isinstance(a, str) for a in typing.get_args(t))
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        return any(_accepts_text(_unwrap(a)[0]) for a in typing.get_args(t))
    return False


def wrong_type(t: Any) -> Any:
    """A value no coercion turns into ``t``."""
    if _is_model(t) or typing.get_origin(t) is dict:
        return "not-a-table"
    if _accepts_text(t):
        return {"wrong": 1}          # a table where text (or a list of text) belongs
    if t is bool:
        return "maybe"
    if typing.get_origin(t) in (list, tuple):
        return "not-a-list"
    return "not-a-number"            # int, float, Literal of numbers


def out_of_range(t: Any, meta: list) -> list[tuple[str, Any]]:
    """Values just outside the field's declared bounds, choices or pattern."""
    cases = []
    is_int = t is int
    for m in meta:
        for c in getattr(m, "metadata", [m]):  # pydantic FieldInfo metadata or annotated_types directly
            if isinstance(c, at.Gt):
                cases.append((f"<= {c.gt}", c.gt))
            elif isinstance(c, at.Ge):
                cases.append((f"< {c.ge}", c.ge - (1 if is_int else max(abs(c.ge) * 0.01, 1e-3))))
            elif isinstance(c, at.Lt):
                cases.append((f">= {c.lt}", c.lt))
            elif isinstance(c, at.Le):
                cases.append((f"> {c.le}", c.le + (1 if is_int else max(abs(c.le) * 0.01, 1e-3))))
            elif isinstance(c, at.MinLen) and c.min_length > 0:
                cases.append(("too short", [] if typing.get_origin(t) in (list, tuple) else ""))
            elif type(c).__name__ == "_PydanticGeneralMetadata" and getattr(c, "pattern", None):
                cases.append(("pattern", "Not A Valid Name!"))
    if typing.get_origin(t) is Literal:
        choices = typing.get_args(t)
        cases.append(("not a choice", 7777 if all(isinstance(a, int) for a in choices) else "no-such-choice"))
    return cases


def _constraints(field) -> list:
    return list(field.metadata)


def walk(model: type[BaseModel], doc: dict, loc: tuple = ()):
    """Yield (loc, field annotation, constraints, required, model) for every field reachable from ``doc``."""
    alias = model.model_config.get("alias_generator")
    for name, field in model.model_fields.items():
        key = alias(name) if alias else name
        t, meta = _unwrap(field.annotation)
        meta = meta + _constraints(field)
        yield loc + (key,), t, meta, field.is_required(), model
        value = doc.get(key)
        if _is_model(t) and isinstance(value, dict):
            yield from walk(t, value, loc + (key,))
        elif typing.get_origin(t) is list and value:
            (inner,) = typing.get_args(t)
            inner, _ = _unwrap(inner)
            if _is_model(inner):
                yield from walk(inner, value[0], loc + (key, 0))
        elif typing.get_origin(t) is dict and value:
            inner, _ = _unwrap(typing.get_args(t)[1])
            first = next(iter(value))
            if _is_model(inner):
                yield from walk(inner, value[first], loc + (key, first))


def _set(doc: dict, loc: tuple, value: Any, *, delete: bool = False) -> dict:
    doc = json.loads(json.dumps(doc))
    target = doc
    for part in loc[:-1]:
        target = target[part]
    if delete:
        target.pop(loc[-1], None)
    else:
        target[loc[-1]] = value
    return doc


def cases() -> list:
    out = []
    for mid, model, loader, base in MODELS:
        base = _drop_none(base)
        seen_levels = set()
        for loc, t, meta, required, owner in walk(model, base):
            dotted = ".".join(map(str, loc))
            out.append(pytest.param(mid, loc, _set(base, loc, wrong_type(t)), dotted, id=f"{mid}:{dotted}:wrong-type"))
            for label, value in out_of_range(t, meta):
                out.append(pytest.param(mid, loc, _set(base, loc, value), dotted, id=f"{mid}:{dotted}:{label}"))
            if required:
                out.append(pytest.param(mid, loc, _set(base, loc, None, delete=True), dotted, id=f"{mid}:{dotted}:missing"))
            parent = loc[:-1]
            if parent not in seen_levels:  # one unknown key per table
                seen_levels.add(parent)
                unknown = parent + ("bogus_key",)
                out.append(pytest.param(mid, unknown, _set(base, unknown, 1), ".".join(map(str, unknown)),
                                        id=f"{mid}:{'.'.join(map(str, unknown))}:unknown-key"))
    return out


CASES = cases()
LOADERS = {mid: (model, loader) for mid, model, loader, _ in MODELS}


def _load(mid: str, path: Path):
    model, loader = LOADERS[mid]
    return loader(path) if loader else load_toml(path, model)


@pytest.mark.parametrize("mid", [m[0] for m in MODELS])
def test_valid_document_loads(tmp_path, mid):
    """The base documents are valid, so each fuzz case breaks exactly one thing."""
    base = _drop_none(next(m[3] for m in MODELS if m[0] == mid))
    path = tmp_path / f"{mid}.toml"
    path.write_text(dump_toml(base))
    assert _load(mid, path) is not None


def test_every_model_and_field_is_fuzzed():
    fuzzed = {(c.values[0], c.values[3]) for c in CASES}
    assert len(CASES) > 300
    for mid, model, _, _ in MODELS:
        alias = model.model_config.get("alias_generator")
        for name in model.model_fields:
            assert (mid, alias(name) if alias else name) in fuzzed
    # nested tables and arrays of tables are reached
    assert {("site", "privacy.epsilon"), ("site", "tasks.0.name"), ("site", "data.labels"),
            ("cohort", "sites.0.n_records"), ("model", "objective.beta_max"),
            ("model", "tasks.right_heart.n_outputs"), ("finetune", "augment.crop_samples")} <= fuzzed


@pytest.mark.parametrize("mid, loc, doc, dotted", CASES)
def test_broken_field_is_a_config_error_naming_file_and_field(tmp_path, mid, loc, doc, dotted):
    path = tmp_path / f"{mid}.toml"
    path.write_text(dump_toml(doc))
    with pytest.raises(ConfigError) as err:
        _load(mid, path)
    message = str(err.value)
    assert f"{path}: {dotted}" in message, message


@pytest.mark.parametrize("mid", [m[0] for m in MODELS])
def test_unreadable_files_are_config_errors(tmp_path, mid):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"{missing}: config file not found"):
        _load(mid, missing)
    bad = tmp_path / "bad.toml"
    bad.write_text("epsilon = = 3\n")
    with pytest.raises(ConfigError, match=f"{bad}: invalid TOML"):
        _load(mid, bad)
    latin = tmp_path / "latin.toml"
    latin.write_bytes('description = "Größe"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=f"{latin}: not UTF-8"):
        _load(mid, latin)


# --------------------------------------------------------------------------- property-based

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_scalars = st.one_of(
    st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
)
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text("abcxyz_", min_size=1, max_size=6), inner,
                                                                         max_size=3)), max_leaves=6)
_LOCS = {mid: [loc for loc, *_ in walk(model, _drop_none(base))] for mid, model, _, base in MODELS}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mid=st.sampled_from([m[0] for m in MODELS]), data=st.data())
def test_random_values_load_or_are_config_errors(tmp_path, mid, data):
    """Any value in any field (one to three at once): the file loads, or a ConfigError names the file."""
    doc = _drop_none(next(m[3] for m in MODELS if m[0] == mid))
    for _ in range(data.draw(st.integers(1, 3))):
        loc = data.draw(st.sampled_from(_LOCS[mid]))
        try:
            doc = _set(doc, loc, data.draw(_values))
        except (TypeError, KeyError, IndexError):  # an earlier draw replaced the table holding this field
            continue
    path = tmp_path / f"{mid}-random.toml"
    path.write_text(dump_toml(doc), encoding="utf-8")
    try:
        _load(mid, path)
    except ConfigError as err:
        assert str(err).startswith(str(path)), str(err)
