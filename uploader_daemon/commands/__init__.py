"""The commands an admin runs beside the daemon: ``list``, ``retry``, ``upload``, ``example-config``.

Each module does the work of one command and returns data or an exit code; the
argument parsing and the printing of errors stay in :mod:`uploader_daemon.cli`.
"""
