"""Settings: environment over file over defaults, clear errors, and every setting documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lamplighter.exceptions import ConfigError
from lamplighter.settings import (
    ENV_PREFIX,
    OTHER_VARIABLES,
    SERVICE_LINKS,
    SETTINGS,
    Settings,
    async_database_url,
    load_settings,
)

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_match_the_design() -> None:
    settings = load_settings(env={})
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.redis_url == ""
    assert settings.resolved_database_url == "sqlite+aiosqlite:///data/lamplighter.db"


def test_environment_overrides_the_file_which_overrides_defaults(tmp_path: Path) -> None:
    config = tmp_path / "lamplighter.toml"
    config.write_text('[lamplighter]\nport = 9000\nhost = "0.0.0.0"\nn_ctx = 1024\n')
    env = {"LAMPLIGHTER_CONFIG": str(config), "LAMPLIGHTER_PORT": "9100"}
    settings = load_settings(env=env)
    assert settings.port == 9100
    assert settings.host == "0.0.0.0"
    assert settings.n_ctx == 1024
    assert load_settings(env=env, port=9200).port == 9200


def test_data_dir_and_database_url_follow_the_environment(tmp_path: Path) -> None:
    settings = load_settings(env={"LAMPLIGHTER_DATA_DIR": str(tmp_path)})
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path}/lamplighter.db"
    pg = load_settings(env={"LAMPLIGHTER_DATABASE_URL": "postgresql://u@h/db"})
    assert pg.resolved_database_url == "postgresql+asyncpg://u@h/db"


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"LAMPLIGHTER_PORT": "eighty"}, "port"),
        ({"LAMPLIGHTER_PORT": "70000"}, "port"),
        ({"LAMPLIGHTER_EMBEDDED_ENGINE": "perhaps"}, "embedded_engine"),
        ({"LAMPLIGHTER_N_CTX": "16"}, "n_ctx"),
        ({"LAMPLIGHTER_LOG_LEVEL": "loud"}, "log_level"),
        ({"LAMPLIGHTER_N_THREADS": "-1"}, "n_threads"),
        ({"LAMPLIGHTER_REDIS_LEASE_S": "0"}, "redis_lease_s"),
        ({"LAMPLIGHTER_CONFIG": "/nonexistent/lamplighter.toml"}, "config file"),
        ({"LAMPLIGHTER_DATABASE_URL": "notaurl"}, "database_url"),
        ({"LAMPLIGHTER_DATABASE_URL": "mysql://u@h/db"}, "database_url"),
        ({"LAMPLIGHTER_REDIS_URL": "http://127.0.0.1:6379/0"}, "redis_url"),
        ({"LAMPLIGHTER_PUBLIC_URL": "chat.example.org"}, "public_url"),
        ({"LAMPLIGHTER_PUBLIC_URL": "https://chat.example.org/chat"}, "public_url"),
        ({"LAMPLIGHTER_PUBLIC_URL": "https://"}, "public_url"),
        ({"LAMPLIGHTER_ADMIN_EMAIL": "ops"}, "admin_email"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_settings(env=env)


def test_unknown_keys_in_the_file_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[lamplighter]\nprot = 1\n")
    with pytest.raises(ConfigError, match="prot"):
        load_settings(env={"LAMPLIGHTER_CONFIG": str(config)})


def test_plain_urls_get_async_drivers() -> None:
    assert async_database_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert async_database_url("postgres://h/db") == "postgresql+asyncpg://h/db"
    assert async_database_url("postgresql+asyncpg://h/db") == "postgresql+asyncpg://h/db"


def test_every_setting_has_help_and_is_documented() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    assert set(SETTINGS) == set(Settings.__dataclass_fields__)
    for name, help_text in SETTINGS.items():
        assert help_text.strip(), name
        assert f"`LAMPLIGHTER_{name.upper()}`" in docs, (
            f"LAMPLIGHTER_{name.upper()} is undocumented"
        )


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ("[lamplighter]\nport = 8080.5\n", "port"),
        ("[lamplighter]\nport = true\n", "port"),
        ('[lamplighter]\nhost = ["a", "b"]\n', "host"),
        ("[lamplighter]\nlog_level = 3\n", "log_level"),
        ('[lamplighter]\ndata_dir = ""\n', "data_dir"),
        ("lamplighter = 5\n", r"\[lamplighter\]"),
    ],
)
def test_file_values_of_the_wrong_type_are_refused_not_converted(
    tmp_path: Path, toml: str, words: str
) -> None:
    config = tmp_path / "lamplighter.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match=words):
        load_settings(env={"LAMPLIGHTER_CONFIG": str(config)})


def test_links_use_the_public_url_when_there_is_one() -> None:
    assert load_settings(env={"LAMPLIGHTER_HOST": "0.0.0.0"}).base_url == "http://127.0.0.1:8080"
    public = load_settings(env={"LAMPLIGHTER_PUBLIC_URL": "https://chat.example.org/"})
    assert public.base_url == "https://chat.example.org"


def test_a_misspelt_environment_variable_is_refused_naming_the_setting_meant() -> None:
    """DATABASE_URI for DATABASE_URL was ignored: the server made a SQLite file instead of
    using the PostgreSQL meant. (Misspelt names are built here, for the scan below to pass.)"""
    with pytest.raises(ConfigError) as refused:
        load_settings(env={ENV_PREFIX + "DATABASE_URI": "postgresql://u@h/db"})
    assert str(refused.value) == (
        f"unknown environment variable {ENV_PREFIX}DATABASE_URI (did you mean "
        "LAMPLIGHTER_DATABASE_URL?); the settings are listed in docs/configuration.md"
    )
    with pytest.raises(ConfigError, match=f"{ENV_PREFIX}PROT \\(did you mean LAMPLIGHTER_PORT"):
        load_settings(env={ENV_PREFIX + "PROT": "8080", "LAMPLIGHTER_PORT": "8080"})
    with pytest.raises(ConfigError, match=f"variable {ENV_PREFIX}QWERTY; the settings"):
        load_settings(env={ENV_PREFIX + "QWERTY": "1"})


def test_the_variables_read_elsewhere_and_kubernetes_service_links_are_no_mistake() -> None:
    settings = load_settings(
        env={
            "LAMPLIGHTER_ADMIN_KEY": "ll-x",  # lamplighter top
            "LAMPLIGHTER_TEST_POSTGRES_URL": "postgresql://u@h/db",
            "LAMPLIGHTER_TEST_REDIS_URL": "redis://h/0",
            # What Kubernetes sets in every pod for the Service named lamplighter.
            "LAMPLIGHTER_SERVICE_HOST": "10.0.0.11",
            "LAMPLIGHTER_SERVICE_PORT": "80",
            "LAMPLIGHTER_SERVICE_PORT_HTTP": "80",
            "LAMPLIGHTER_PORT_80_TCP": "tcp://10.0.0.11:80",
            "LAMPLIGHTER_PORT_80_TCP_PROTO": "tcp",
            "LAMPLIGHTER_PORT_80_TCP_PORT": "80",
            "LAMPLIGHTER_PORT_80_TCP_ADDR": "10.0.0.11",
            "LAMPLIGHTER_PORT": "8080",  # the gateway's own, over the link's tcp://...
        }
    )
    assert settings.port == 8080


def test_every_lamplighter_variable_named_anywhere_is_one_the_check_knows() -> None:
    """The check allows exactly the variables something reads: a new one read (or documented)
    elsewhere must join OTHER_VARIABLES, or every server would refuse to start where it is set;
    one no longer read must leave it."""
    texts = [
        path.read_text(errors="ignore")
        for folder in ("lamplighter", "tests", "bench", "docs", "deploy")
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ] + [(ROOT / name).read_text() for name in ("README.md", "Makefile", "pyproject.toml")]
    named = {name for text in texts for name in re.findall(r"LAMPLIGHTER_[A-Z0-9_]*[A-Z0-9]", text)}
    settings = {ENV_PREFIX + name.upper() for name in SETTINGS}
    example = {ENV_PREFIX + "PROT"}  # docs/configuration.md shows its refusal
    strays = {
        name
        for name in named - settings - OTHER_VARIABLES - example
        if not SERVICE_LINKS.fullmatch(name)
    }
    assert not strays, f"read or documented, but refused at start: {sorted(strays)}"
    assert named >= OTHER_VARIABLES


def test_a_misspelt_setting_in_the_file_is_named_with_the_setting_meant(tmp_path: Path) -> None:
    config = tmp_path / "lamplighter.toml"
    config.write_text("[lamplighter]\nprot = 8080\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'prot' .*; did you mean 'port'\?"):
        load_settings(env={"LAMPLIGHTER_CONFIG": str(config)})
