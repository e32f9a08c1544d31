"""Configuration: typed model and the validating YAML loader."""

from costproc.config.load import default_config_path, load_config, parse_config
from costproc.config.model import Config

__all__ = ["Config", "default_config_path", "load_config", "parse_config"]
