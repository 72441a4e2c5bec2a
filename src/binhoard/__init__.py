"""binhoard: backup and point-in-time recovery of MariaDB to object storage."""

__version__ = "0.1.0"
