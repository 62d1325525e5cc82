"""Allow ``python -m uploader_daemon``."""

from uploader_daemon.cli import main

raise SystemExit(main())
