"""Reading a config: TOML, ``${NAME}`` from the environment, validation, every problem at once.

`load_config(path)` returns a `Config` or raises `ConfigError` whose `problems` are lines of the
form ``file: key: why``. No problem line ever contains a secret (tokens, passwords, values read
from the environment).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# tomli is the parser the standard library's tomllib was made from, published compiled (mypyc):
# ~3x faster, which is a second of start-up for a 10,000-person site (issue 6). Same API.
try:
    import tomli as tomllib
except ImportError:  # pragma: no cover - the dependency is declared; stay usable without it
    import tomllib  # type: ignore[no-redef]
from pydantic import ValidationError

from jaa_gateway.config.checks import check_assessment, cross_check, cross_check_document
from jaa_gateway.config.models import Assessment, Config
from jaa_gateway.config.report import (
    ConfigError,
    item_label,
    one_line,
    pydantic_problems,
    redact,
    secrets_in,
)

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _substitute_env(
    node: Any,
    env: Mapping[str, str],
    path: str,
    problems: list[tuple[str, str]],
    used: set[str] | None = None,
) -> Any:
    """Replace ``${NAME}`` in every string value; a missing variable is a problem at its key.

    `used` collects the substituted values, so they can be kept out of every message.
    """
    if isinstance(node, str):

        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env:
                problems.append((path, f"environment variable {name} is not set"))
                return ""
            if used is not None:
                used.add(env[name])
            return env[name]

        return _ENV_RE.sub(repl, node)
    if isinstance(node, dict):
        return {k: _substitute_env(v, env, _join(path, k), problems, used) for k, v in node.items()}
    if isinstance(node, list):
        return [
            _substitute_env(v, env, f"{path}[{item_label(node, i)}]", problems, used)
            for i, v in enumerate(node)
        ]
    return node


def _has_env_ref(node: Any) -> bool:
    if isinstance(node, str):
        return "${" in node
    if isinstance(node, dict):
        return any(_has_env_ref(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_env_ref(v) for v in node)
    return False


def parse_config(
    data: Mapping[str, Any], source: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate an already-parsed TOML document; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    env_problems: list[tuple[str, str]] = []
    env_values: set[str] = set()
    # only sections that hold a ${NAME} are walked with key paths (10,000 people: ~0.5 s)
    doc: dict[str, Any] = {
        k: _substitute_env(v, env, k, env_problems, env_values) if _has_env_ref(v) else v
        for k, v in data.items()
    }
    problems = list(env_problems)
    cfg: Config | None = None
    try:
        cfg = Config.model_validate(doc)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, doc, {k for k, _ in env_problems}))
        problems.extend(cross_check_document(doc))
    else:
        problems.extend(cross_check(cfg))
    if problems or cfg is None:
        secrets = env_values | secrets_in(doc) | secrets_in(data)
        lines: list[str] = []
        for key, why in problems:
            line = one_line(redact(f"{source}: {key}: {why}", secrets))
            if line not in lines:
                lines.append(line)
        raise ConfigError(lines)
    return cfg


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{p}: (file): cannot read: {exc.strerror or exc}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: (file): not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's messages give line and column, never the offending text
        raise ConfigError([f"{p}: (file): not valid TOML: {exc}"]) from None
    return parse_config(data, str(p), env)


def parse_assessment(cfg: Config, body: Mapping[str, Any]) -> Assessment:
    """Validate an assessment from outside the config (the HTTP API) against `cfg`.

    Raises ConfigError whose problems are ``key: why`` lines (no file name).
    """
    try:
        a = Assessment.model_validate(dict(body))
    except ValidationError as exc:
        lines = [f"{key}: {why}" for key, why in pydantic_problems(exc, dict(body), set())]
        raise ConfigError(lines) from None
    problems = check_assessment(cfg, a, "")
    if problems:
        raise ConfigError([f"{key.lstrip('.')}: {why}" for key, why in problems])
    return a
