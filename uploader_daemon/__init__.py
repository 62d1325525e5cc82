"""uploader-daemon: deliver files dropped into folders to HTTP APIs, and never lose one."""

__version__ = "0.1.0"
