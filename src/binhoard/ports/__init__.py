"""Ports: what the use cases (``binhoard.ops``) need of the outside world, as protocols.

``server.py`` is the database server and its tools; the object storage port is
``binhoard.storage.store.ObjectStore``. Implementations are built only in
``binhoard.app``; the ops' unit tests use fakes with behaviour (``tests/support/``).
"""
