"""Any value of any numeric config field: the input checks pass it or refuse it in one line.

Through the command line, ml_collections keeps each field's type (an int field takes only
ints), so the fuzzing draws values of the field's own type, every corner included: huge,
negative, zero, NaN, infinities. Whatever comes, `preflight.check_inputs` (everything before
the first compile) must either accept the config or raise `UserInputError`: never another
exception, which would reach the user as a traceback.
"""

import json

import pytest
from helpers import make_omniglot_set
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from configs import omniglot as omniglot_configs
from configs import sinusoid as sinusoid_configs
from maml_dist import preflight
from maml_dist.errors import UserInputError

INTS = st.one_of(
    st.integers(-3, 40),
    st.sampled_from([-(2**63), -1, 0, 1025, 10**6, 2**31, 2**63 - 1, 10**30]),
)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-320, 1e308, -1.0]),
)


def _numeric_fields(config):
    """`a.b` names and values of the config's bool, int and float fields."""
    out = {}

    def add(prefix, tree):
        for key, value in tree.items():
            if isinstance(value, dict):
                add(f"{prefix}{key}.", value)
            elif isinstance(value, bool | int | float):
                out[prefix + key] = value

    add("", json.loads(config.to_json()))
    return out


def _strategy(value):
    if isinstance(value, bool):
        return st.booleans()
    return INTS if isinstance(value, int) else FLOATS


def _set(config, name, value):
    *path, last = name.split(".")
    node = config
    for part in path:
        node = node[part]
    node[last] = value


def _fuzz(base, workdir, data):
    fields = _numeric_fields(base)
    names = sorted(fields)

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.data())
    def check(draw):
        config = base.copy_and_resolve_references()
        chosen = draw.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
        for name in chosen:
            _set(config, name, draw.draw(_strategy(fields[name]), label=name))
        try:
            preflight.check_inputs(config, str(workdir), 1)
        except UserInputError as e:
            message = str(e)
            assert message and "\n" not in message, message

    check()


def test_sinusoid_numeric_fields_never_raise_anything_but_one_line(tmp_path):
    _fuzz(sinusoid_configs.get_config("tiny"), tmp_path / "run", None)


@pytest.fixture(scope="module")
def omniglot_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("omniglot")
    make_omniglot_set(root, "images_background_small1", {"Alpha": 3, "Beta": 3, "Gamma": 3})
    make_omniglot_set(root, "images_background_small2", {"Delta": 3})
    return root


def test_omniglot_numeric_fields_never_raise_anything_but_one_line(omniglot_data, tmp_path):
    config = omniglot_configs.get_config("tiny")
    config.data_dir = str(omniglot_data)
    config.omniglot.cache_dir = str(tmp_path / "cache")
    _fuzz(config, tmp_path / "run", None)
