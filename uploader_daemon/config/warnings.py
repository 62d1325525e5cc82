"""What is allowed in a config but worth a warning when the daemon starts (and in check-config).

Like ssh with a private key: a ``{file: ...}`` secret that other users can read works,
but should not; ``verify_tls: false`` works, and lets anyone on the path read the
password and the files.
"""

from __future__ import annotations

import stat

from uploader_daemon.config.schema import Config
from uploader_daemon.secrets import secret_files


def config_warnings(config: Config) -> list[str]:
    """One sentence per thing an admin should fix, saying how."""
    warnings = []
    for path in dict.fromkeys(secret_files(config)):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue  # it was read a moment ago; a problem now shows when it is read again
        if mode & 0o077:
            warnings.append(
                f"secret file {path} is readable by other users (mode {mode:o}); run chmod 600 {path}"
            )
    for target in config.targets:
        if not target.api.verify_tls:
            warnings.append(
                f"target {target.name}: api.verify_tls is false, so anyone between this host and "
                f"{target.api.base_url} can read the password, the tokens and the files; set it to true "
                "(and ca_file for a private CA)"
            )
    return warnings
