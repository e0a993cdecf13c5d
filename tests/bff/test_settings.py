from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from bff.settings import SettingsError, env_overrides, load_settings, validate_settings
from tests.support.processes import REPO
from tests.support.service import deep_update

from .support import ENC_KEY_1, ENC_KEY_2, HMAC_KEY, HS_SECRET, SERVICE_SECRET, Keys, base_settings


def fields_of(exc: SettingsError) -> set[str]:
    return {field for field, _ in exc.problems}


def test_shipped_config_files_are_valid_and_complete() -> None:
    # bff.yaml documents every setting with its default (tests/bff/test_documented_defaults.py); its
    # header shows the least a production deployment sets: that, plus the secrets, is valid.
    text = (REPO / "config/bff.yaml").read_text()
    header = text.split("\n\n", 1)[0]
    example = "\n".join(line[4:] for line in header.splitlines() if line.startswith("#   "))
    minimal = yaml.safe_load(example)
    assert set(minimal) == {"vluna", "auth", "cache", "server"}
    env = {
        "VLUNA_BFF__VLUNA__SERVICE_KEY_SECRET": SERVICE_SECRET,
        "VLUNA_BFF__CACHE__ENCRYPTION_KEYS": f'["{ENC_KEY_1}"]',
        "VLUNA_BFF__CACHE__HMAC_KEY": HMAC_KEY,
    }
    data = yaml.safe_load(text)
    for part in (minimal, env_overrides(env)[0]):
        deep_update(data, part)
    settings = validate_settings(data)
    assert settings.cache.backend == "redis" and settings.auth.methods == ["bearer", "cookie"]
    # bff.yaml alone names each required key that has no default.
    with pytest.raises(SettingsError) as err:
        load_settings(REPO / "config/bff.yaml", environ=env)
    assert fields_of(err.value) == {
        "vluna.realm_id",
        "vluna.service_key_id",
        "auth.jwt.jwks_url",
        "auth.jwt.issuer",
        "auth.jwt.audience",
        "cache.redis.url",
    }
    dev = load_settings(REPO / "config/bff.dev.yaml", environ={}, overrides={"dev": {"enabled": True}})
    assert dev.dev.enabled


def test_yaml_then_env_then_file_secrets(tmp_path: Path, keys: Keys) -> None:
    cfg = tmp_path / "bff.yaml"
    cfg.write_text(yaml.safe_dump(base_settings(keys)))
    secret_file = tmp_path / "svc"
    secret_file.write_text("ZnJvbS1hLWZpbGU=\n")
    env = {
        "VLUNA_BFF__SERVER__PORT": "9191",
        "VLUNA_BFF__TOKENS__ALLOWED_SCOPES": '["checkout"]',
        "VLUNA_BFF__TOKENS__DEFAULT_SCOPES": '["checkout"]',
        "VLUNA_BFF__VLUNA__SERVICE_KEY_SECRET_FILE": str(secret_file),
        "VLUNA_BFF__AUTH__JWT__LEEWAY_SEC": "12",
        "UNRELATED": "x",
    }
    s = load_settings(cfg, environ=env)
    assert s.server.port == 9191
    assert s.tokens.allowed_scopes == ["checkout"]
    assert s.auth.jwt.leeway_sec == 12
    assert s.vluna.service_key_secret is not None
    assert s.vluna.service_key_secret.get_secret_value() == "ZnJvbS1hLWZpbGU="


def test_secret_files_hold_json_lists_and_plain_text(tmp_path: Path, keys: Keys) -> None:
    cfg = tmp_path / "bff.yaml"
    cfg.write_text(yaml.safe_dump(base_settings(keys)))
    rotation = [ENC_KEY_2, ENC_KEY_1]
    keys_file = tmp_path / "encryption-keys"
    keys_file.write_text(json.dumps(rotation) + "\n")
    bracketed = tmp_path / "hs"
    bracketed.write_text("[not json, but a secret of at least 32 bytes]\n")
    s = load_settings(
        cfg,
        environ={
            "VLUNA_BFF__CACHE__ENCRYPTION_KEYS_FILE": str(keys_file),
            "VLUNA_BFF__AUTH__JWT__HS_SECRET_FILE": str(bracketed),
        },
    )
    assert [k.get_secret_value() for k in s.cache.encryption_keys] == rotation
    assert s.auth.jwt.hs_secret is not None
    assert s.auth.jwt.hs_secret.get_secret_value() == "[not json, but a secret of at least 32 bytes]"


def test_config_path_from_env(tmp_path: Path, keys: Keys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(base_settings(keys, server={"port": 7070})))
    assert load_settings(environ={"VLUNA_BFF_CONFIG": str(cfg)}).server.port == 7070


def test_every_bad_field_is_named(keys: Keys) -> None:
    data = base_settings(
        keys,
        vluna={"realm_id": None, "service_key_secret": None},
        auth={"jwt": {"algorithms": ["none", "RS256", "XX1"], "issuer": None, "audience": []}},
        tokens={"default_scopes": ["admin"], "refresh_ahead_ratio": 1.5},
        cache={"encryption_keys": ["nokey", "k:" + "A" * 8], "hmac_key": "short"},
        server={"port": "eighty"},
    )
    data["server"]["typo_field"] = 1
    with pytest.raises(SettingsError) as info:
        validate_settings(data)
    # Type errors first (pydantic), then the semantic checks once the types are right.
    assert {"tokens.refresh_ahead_ratio", "server.port", "server.typo_field"} <= fields_of(info.value)
    data["server"] = {}
    data["tokens"]["refresh_ahead_ratio"] = 0.5
    with pytest.raises(SettingsError) as info:
        validate_settings(data)
    assert {
        "vluna.realm_id",
        "vluna.service_key_secret",
        "auth.jwt.algorithms",
        "auth.jwt.issuer",
        "auth.jwt.audience",
        "tokens.default_scopes",
        "cache.encryption_keys[0]",
        "cache.encryption_keys[1]",
        "cache.hmac_key",
    } <= fields_of(info.value)
    assert "'none' is never accepted" in str(info.value)


def test_lock_must_outlive_the_slowest_issuance(keys: Keys) -> None:
    data = base_settings(keys, vluna={"timeout_sec": 8, "max_retries": 2}, tokens={"lock_ttl_sec": 20})
    with pytest.raises(SettingsError) as info:
        validate_settings(data)
    assert fields_of(info.value) == {"tokens.lock_ttl_sec"}


def test_hs_algorithm_needs_a_secret_and_redis_needs_a_url(keys: Keys) -> None:
    data = base_settings(keys, auth={"jwt": {"algorithms": ["HS256"]}}, cache={"backend": "redis"})
    with pytest.raises(SettingsError) as info:
        validate_settings(data)
    assert {"auth.jwt.hs_secret", "cache.redis.url"} <= fields_of(info.value)


def test_unreadable_secret_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(environ={"VLUNA_BFF__CACHE__HMAC_KEY_FILE": str(tmp_path / "missing")})
    assert fields_of(info.value) == {"cache.hmac_key"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("vluna: [unclosed\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(bad, environ={})


def test_secrets_never_in_errors_dumps_or_reprs(keys: Keys) -> None:
    secrets = [
        SERVICE_SECRET,
        HS_SECRET,
        ENC_KEY_1.split(":")[1],
        ENC_KEY_2.split(":")[1],
        HMAC_KEY,
        "hunter2pw",
    ]
    data = base_settings(
        keys,
        auth={"jwt": {"hs_secret": HS_SECRET, "algorithms": ["RS256", "HS256"]}},
        cache={
            "backend": "redis",
            "encryption_keys": [ENC_KEY_1, ENC_KEY_2],
            "redis": {"url": "redis://:hunter2pw@127.0.0.1:6379/0"},
        },
    )
    s = validate_settings(data)
    for text in (repr(s), str(s), str(s.redacted_dump()), yaml.safe_dump(s.redacted_dump())):
        for secret in secrets:
            assert secret not in text
    # A rejected secret must not be echoed in the error either.
    data["vluna"]["service_key_secret"] = {"nested": SERVICE_SECRET}
    data["cache"]["encryption_keys"] = ["k1:" + HS_SECRET]
    with pytest.raises(SettingsError) as info:
        validate_settings(data)
    for secret in secrets:
        assert secret not in str(info.value)


@pytest.mark.parametrize(
    "template",
    ["{value}{dept}", "t:{value}x{dept}", "{value}%{dept}", "{a}-{value}7{b}", "{value}:{dept}{x}"],
)
def test_templates_whose_values_could_run_together_are_refused(keys: Keys, template: str) -> None:
    data = base_settings(keys, mapping={"principal": [{"claim": "org", "template": template}]})
    with pytest.raises(SettingsError) as info:
        validate_settings(data)
    assert "mapping.principal[0].template" in fields_of(info.value)
    assert "separated" in str(info.value)


def test_templates_with_separated_placeholders_are_accepted(keys: Keys) -> None:
    for template in ("t:{value}:{dept}", "{tenant}/{value}", "x-{value}|{a}.{b}", "org:{value}"):
        data = base_settings(keys, mapping={"principal": [{"claim": "org", "template": template}]})
        assert validate_settings(data).mapping.principal[0].template == template


def test_api_base_url_is_checked_and_never_the_service_api(keys: Keys) -> None:
    ok = validate_settings(base_settings(keys, vluna={"api_base_url": "https://eu.api.vluna.test/api/v1/"}))
    assert ok.vluna.api_base_url == "https://eu.api.vluna.test/api/v1"
    for bad in ("https://eu.api.vluna.test/mgt/v1", "ftp://x/api/v1"):
        with pytest.raises(SettingsError) as err:
            validate_settings(base_settings(keys, vluna={"api_base_url": bad}))
        assert fields_of(err.value) == {"vluna.api_base_url"}
        assert bad not in str(err.value)


@pytest.mark.parametrize(
    ("origin", "says"),
    [
        ("*", "'*'"),
        ("https://*.example.com", "wildcards"),
        ("null", "'null'"),
        ("https://app.example.com/", "trailing slash"),
        ("https://app.example.com/app", "no path"),
        ("https://App.Example.com", "https://app.example.com"),
        ("https://app.example.com:443", "default port"),
        ("app.example.com", "scheme://host"),
        ("ftp://app.example.com", "http:// or https://"),
        ("https://ex_ample.com", "host name"),
        ("https://bob:hunter2-secret@app.example.com", "no user or password"),
    ],
)
def test_cors_origins_are_checked_at_start_up(keys: Keys, origin: str, says: str) -> None:
    data = base_settings(keys, server={"cors_allow_origins": ["https://ok.example.com", origin]})
    with pytest.raises(SettingsError) as info:
        validate_settings(data)
    assert fields_of(info.value) == {"server.cors_allow_origins[1]"}
    assert says in str(info.value)
    assert "hunter2" not in str(info.value)


def test_cors_origins_as_browsers_send_them_are_accepted(keys: Keys) -> None:
    origins = [
        "https://app.example.com",
        "http://localhost:5173",
        "http://127.0.0.1:8080",
        "http://[::1]:3000",
    ]
    settings = validate_settings(base_settings(keys, server={"cors_allow_origins": origins}))
    assert settings.server.cors_allow_origins == origins
    twice = base_settings(keys, server={"cors_allow_origins": [origins[0], origins[0]]})
    with pytest.raises(SettingsError) as info:
        validate_settings(twice)
    assert "listed twice" in str(info.value)


def test_an_app_is_never_built_with_a_wildcard_origin(keys: Keys) -> None:
    from bff.app import create_app
    from bff.settings import Settings

    unchecked = Settings.model_validate(base_settings(keys, server={"cors_allow_origins": ["*"]}))
    with pytest.raises(SettingsError) as info:
        create_app(unchecked)
    assert fields_of(info.value) == {"server.cors_allow_origins[0]"}


WEAK = {
    "32 identical characters": "a" * 32,
    "two characters": "ab" * 16,
    "a repeated word": "password1234password1234password",
    "a run": "0123456789abcdefghijklmnopqrstuvwxyz",
    "mostly one character": "a" * 30 + "bcdefghij",
}


@pytest.mark.parametrize("weak", list(WEAK.values()), ids=list(WEAK))
def test_obviously_weak_secrets_are_refused(keys: Keys, weak: str) -> None:
    data = base_settings(
        keys,
        auth={"jwt": {"algorithms": ["RS256", "HS256"], "hs_secret": weak}},
        cache={
            "hmac_key": weak,
            "encryption_keys": [ENC_KEY_1, "k9:" + base64.b64encode(weak[:32].encode()).decode()],
        },
    )
    with pytest.raises(SettingsError) as info:
        validate_settings(data)
    assert fields_of(info.value) == {"auth.jwt.hs_secret", "cache.hmac_key", "cache.encryption_keys[1]"}
    text = str(info.value)
    assert weak not in text and weak[:32] not in text
    assert "random" in text


def test_random_secrets_pass_the_weakness_check() -> None:
    import os
    import secrets

    from bff.settings import weak_key_problem

    for _ in range(2000):
        for key in (os.urandom(32), secrets.token_hex(16).encode(), base64.b64encode(os.urandom(32))):
            assert weak_key_problem(key) is None


def test_dev_mode_caches_in_process_unless_a_backend_is_named() -> None:
    # `vluna-bff dev` anywhere (no config file): one process, no Redis needed.
    assert validate_settings({"dev": {"enabled": True}}).cache.backend == "memory"
    with pytest.raises(SettingsError) as info:
        validate_settings({"dev": {"enabled": True}, "cache": {"backend": "redis"}})
    assert "cache.redis.url" in str(info.value)
    named = validate_settings(
        {
            "dev": {"enabled": True},
            "cache": {"backend": "redis", "redis": {"url": "redis://127.0.0.1:6379/0"}},
        }
    )
    assert named.cache.backend == "redis"
