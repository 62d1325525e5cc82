"""Configuration: YAML edited by admins, parsed once into immutable objects.

``load_config(path)`` returns a :class:`Config` or raises :class:`ConfigError` listing
every problem with its key path.
"""

from uploader_daemon.config.loader import default_config_path, load_config, parse_config
from uploader_daemon.config.schema import Config, TargetSettings

__all__ = ["Config", "TargetSettings", "default_config_path", "load_config", "parse_config"]
