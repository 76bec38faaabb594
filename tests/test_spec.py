import math
from datetime import timedelta

import pytest

from airflow_infra import Environment, Resources
from airflow_infra.errors import InfraSpecError
from airflow_infra.quantities import format_bytes, parse_bytes, parse_cpu, parse_seconds
from airflow_infra.spec import build_models, canonical_requirement


@pytest.mark.parametrize(
    ("text", "millicores"),
    [(2, 2000), (0.5, 500), ("500m", 500), ("1.5", 1500), ("2", 2000), ("0.1", 100), (".25", 250)],
)
def test_cpu_quantities(text, millicores):
    assert parse_cpu(text) == millicores


@pytest.mark.parametrize(
    ("text", "size"),
    [("4Gi", 4 * 2**30), ("512Mi", 512 * 2**20), ("1G", 10**9), ("1.5Gi", int(1.5 * 2**30)), (1024, 1024), ("1e3", 1000), ("128974848", 128974848)],
)
def test_byte_quantities(text, size):
    assert parse_bytes(text) == size


@pytest.mark.parametrize("bad", ["4GB", "lots", "-1Gi", "", "1 Gi Gi", True, float("nan"), -5])
def test_bad_byte_quantities_say_what_is_valid(bad):
    with pytest.raises(ValueError, match=r"512Mi|non-negative|size|suffix"):
        parse_bytes(bad)


@pytest.mark.parametrize(("text", "seconds"), [(90, 90.0), ("90s", 90.0), ("2h30m", 9000.0), ("1d", 86400.0), (timedelta(minutes=2), 120.0), ("30", 30.0)])
def test_durations(text, seconds):
    assert parse_seconds(text) == seconds


def test_format_bytes():
    assert format_bytes(4 * 2**30) == "4Gi"
    assert format_bytes(250_000_000) == "238.4Mi"
    assert format_bytes(None) == "-"


def test_requirements_are_canonical():
    assert canonical_requirement("NumPy <2") == "numpy<2"
    assert canonical_requirement("scikit_learn>=1.5, <1.6") == "scikit-learn<1.6,>=1.5"
    assert canonical_requirement("Requests[SOCKS,security]") == "requests[security,socks]"


@pytest.mark.parametrize(
    "text",
    ["NumPy <2", "scikit_learn>=1.5, <1.6", "Requests[SOCKS, security]", "a.b_c-d~=1.0", "x===1.0", "numpy>=1.26.0rc1",
     "pkg==1.0.post1", "pkg!=1.*", "six", "Zope.Interface >= 5 , != 5.1", "torch==2.5.*", "pkg~=1", "pkg<1.*",
     "pkg @ https://example.invalid/pkg-1.0.tar.gz", "pkg>=1; python_version >= '3.11'"],
)
def test_fast_canonical_form_equals_packagings(text):
    from airflow_infra.spec import _canonical_requirement, _canonical_requirement_full

    from airflow_infra.spec import is_valid_requirement

    try:
        expected = _canonical_requirement_full(text)
    except ValueError:
        with pytest.raises(ValueError):
            _canonical_requirement.__wrapped__(text)
        assert not is_valid_requirement(text)  # parse time's check agrees
    else:
        assert _canonical_requirement.__wrapped__(text) == expected
        assert is_valid_requirement(text)


@pytest.mark.parametrize("bad", ["numpy<<2", "pkg==banana", "-e git+https://x", "--index-url http://x", "", "pandas; rm -rf /"])
def test_bad_requirements_rejected(bad):
    with pytest.raises(Exception, match="PEP 508"):
        Environment(packages=[bad])


def test_environment_hash_ignores_order_and_spelling():
    a = Environment(packages=["pandas==2.2.*", "NumPy<2"], apt_packages=["libgomp1", "curl"], env={"A": "1", "B": "2"})
    b = Environment(packages=["numpy <2", "Pandas==2.2.*"], apt_packages=["curl", "libgomp1"], env={"B": "2", "A": "1"})
    assert a == b
    assert a.content_hash() == b.content_hash()
    assert a.build_hash() == b.build_hash()


def test_environment_hash_changes_with_content():
    base = Environment(packages=["numpy<2"])
    assert base.build_hash() != Environment(packages=["numpy<3"]).build_hash()
    assert base.build_hash() != base.build_hash(requirements_text="pandas\n")
    # Runtime variables are not part of what is built, but are part of the declaration.
    with_env = Environment(packages=["numpy<2"], env={"X": "1"})
    assert base.build_hash() == with_env.build_hash()
    assert base.content_hash() != with_env.content_hash()


def test_resources_normalise_and_hash():
    a = Resources(cpu="500m", memory="1Gi", timeout="1h")
    b = Resources(cpu=0.5, memory=2**30, timeout=3600)
    assert a == b and a.content_hash() == b.content_hash()
    assert a.cpu == 0.5 and a.memory == 2**30 and a.timeout == 3600.0
    assert Resources(gpu="2").gpu == 2


@pytest.mark.parametrize(
    ("field", "value", "hint"),
    [
        ("memory", "4GB!", "512Mi"),
        ("cpu", "2 cores", "500m"),
        ("gpu", -1, "whole number"),
        ("gpu_type", "a100; rm", "GPU type"),
        ("timeout", "soon", "2h30m"),
        ("python", "python3", "3.11"),
        ("apt_packages", ["libgomp1 && curl evil"], "Debian package"),
        ("env", {"BAD-NAME": "x"}, "environment variable name"),
        ("base_image", "UPPER/Case Image", "image reference"),
        ("packages", ["numpy<<2"], "PEP 508"),
    ],
)
def test_errors_name_dag_task_field_and_what_is_valid(field, value, hint):
    with pytest.raises(InfraSpecError) as info:
        build_models("recsys", "fit_b", {field: value}, skip_templated=True)
    message = str(info.value)
    assert "DAG 'recsys', task 'fit_b'" in message
    assert f"{field}=" in message
    assert hint in message


def test_templated_resources_wait_until_rendered():
    env, res = build_models("d", "t", {"memory": "{{ params.mem }}", "cpu": 2}, skip_templated=True)
    assert res.memory is None and res.cpu == 2
    with pytest.raises(InfraSpecError, match="memory="):
        build_models("d", "t", {"memory": "{{ params.mem }}"}, skip_templated=False)


def _random_strings(alphabet: str, count: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14))) for _ in range(count)]


def test_plain_pin_fast_path_accepts_only_what_the_full_grammar_accepts():
    """_PLAIN_PIN lets a pin through at parse time without the full pattern: it must accept
    nothing the full check refuses (checked on pins and on random strings of their alphabet)."""
    from airflow_infra.spec import _PLAIN_PIN, _canonical_requirement_full

    candidates = [
        "pandas==2.2.*", "numpy<2", "a>=1.0", "x!=3", "a-b_c.d<=0.1", "pkg==1.*", "pkg<1.*", "pkg==1..2",
        "pkg==.1", "-pkg==1", "pkg-==1", "pkg==1.2.*\n", "pkg ==1", "pkg==1 ", "pkg===1", "pkg~=1",
        *_random_strings("ab1-_.=<>!~*2 \n", 30_000, seed=13),
    ]
    accepted = 0
    for text in candidates:
        if _PLAIN_PIN.match(text):
            accepted += 1
            _canonical_requirement_full(text)  # raises if the fast path let a bad pin through
    assert accepted > 100  # the random strings reach the fast path, not only the listed ones


def test_parse_bytes_fast_path_agrees_with_the_general_parser():
    from airflow_infra.quantities import _BINARY, _split, parse_bytes

    for text in ["1Gi", "512Mi", "007Ki", "0Mi", "123456789012345Pi", "1Ei", *_random_strings("019GiMK ", 5_000, seed=7)]:
        try:
            number, unit = _split(text)
            expected = math.ceil(number * _BINARY[unit]) if unit in _BINARY else None
        except ValueError:
            expected = None
        if expected is not None:
            assert parse_bytes(text) == expected, text
    for bad in ["Gi", "1.5.Gi", "١٢Gi", "²Gi", "1 Gi\n", "-1Gi"]:
        with pytest.raises(ValueError):
            parse_bytes(bad)
