"""Secrets that are obviously not random (32 identical characters, a repeated word, a run such as
0123...) are refused when the configuration is loaded: check-config and serve name each field
and never print the value."""

from __future__ import annotations

import base64
import subprocess

from tests.support.keys import UserKeys
from tests.support.ports import free_port
from tests.support.processes import PY, REPO
from tests.support.service import bff_config, write_config

WEAK_HMAC = "h" * 32
WEAK_HS = "0123456789abcdefghijklmnopqrstuvwxyz"
WEAK_AES = base64.b64encode(b"passpasspasspasspasspasspasspass").decode()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "bff.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )


def weak_config(keys: UserKeys) -> dict[str, object]:
    data = bff_config("http://127.0.0.1:9", keys.pem())
    data["cache"]["hmac_key"] = WEAK_HMAC
    data["cache"]["encryption_keys"] = [data["cache"]["encryption_keys"][0], f"w1:{WEAK_AES}"]
    data["auth"]["jwt"]["hs_secret"] = WEAK_HS
    data["auth"]["jwt"]["algorithms"] = ["RS256", "HS256"]
    return data


def test_check_config_and_serve_refuse_weak_secrets(user_keys: UserKeys) -> None:
    cfg = write_config(weak_config(user_keys))
    try:
        checked = run("check-config", "--config", str(cfg))
        served = run("serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(free_port()))
    finally:
        cfg.unlink()
    for out in (checked, served):
        text = out.stdout + out.stderr
        assert out.returncode != 0, text
        for field in ("cache.hmac_key", "auth.jwt.hs_secret", "cache.encryption_keys[1]"):
            assert field in text, (field, text)
        assert "cache.encryption_keys[0]" not in text
        for secret in (WEAK_HMAC, WEAK_HS, WEAK_AES, "passpass"):
            assert secret not in text
        assert "Traceback" not in text


def test_the_same_keys_from_the_environment_are_refused_too(user_keys: UserKeys) -> None:
    data = bff_config("http://127.0.0.1:9", user_keys.pem())
    cfg = write_config(data)
    try:
        out = subprocess.run(
            [PY, "-m", "bff.cli", "check-config", "--config", str(cfg)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
            check=False,
            env={"PATH": "/usr/bin:/bin", "VLUNA_BFF__CACHE__HMAC_KEY": "Z" * 40},
        )
    finally:
        cfg.unlink()
    assert out.returncode != 0
    assert "cache.hmac_key" in out.stdout + out.stderr and "Z" * 40 not in out.stdout + out.stderr
