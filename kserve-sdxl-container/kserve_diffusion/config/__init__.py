"""Server settings: declared once (settings.py), parsed from flags/env/.env (parsing.py), documented (reference.py)."""

from .parsing import build_parser, parse_config
from .settings import ServerConfig, Setting, defaults, parse_bool, settings

__all__ = ["ServerConfig", "Setting", "build_parser", "defaults", "parse_bool", "parse_config", "settings"]
