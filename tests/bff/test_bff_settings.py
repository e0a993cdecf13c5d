from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from bff_support import ENC_KEY_1, ENC_KEY_2, HMAC_KEY, HS_SECRET, SERVICE_SECRET, Keys, base_settings

from bff.settings import SettingsError, env_overrides, load_settings, validate_settings

REPO = Path(__file__).resolve().parents[2]


def fields_of(exc: SettingsError) -> set[str]:
    return {field for field, _ in exc.problems}


def test_shipped_config_files_are_valid_and_complete() -> None:
    # bff.yaml documents every setting with its default (test_bff_documented_defaults.py); its
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
    settings = validate_settings(_deep_merge(yaml.safe_load(text), minimal, env_overrides(env)[0]))
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


def _deep_merge(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = _deep_merge(out[key], value)
            else:
                out[key] = value
    return out


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
    rotation = [f"k2:{base64.b64encode(b'2' * 32).decode()}", f"k1:{base64.b64encode(b'1' * 32).decode()}"]
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


def test_api_base_url_is_checked_and_never_the_service_api(keys: Keys) -> None:
    ok = validate_settings(base_settings(keys, vluna={"api_base_url": "https://eu.api.vluna.test/api/v1/"}))
    assert ok.vluna.api_base_url == "https://eu.api.vluna.test/api/v1"
    for bad in ("https://eu.api.vluna.test/mgt/v1", "ftp://x/api/v1"):
        with pytest.raises(SettingsError) as err:
            validate_settings(base_settings(keys, vluna={"api_base_url": bad}))
        assert fields_of(err.value) == {"vluna.api_base_url"}
        assert bad not in str(err.value)
