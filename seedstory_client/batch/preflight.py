"""Imported first by :mod:`seedstory_client.batch`: every package the batch needs is checked before any of its
modules is imported and before any job is read or queued (:func:`seedstory_client.deps.check_dependencies` raises
``MissingDependency``, an ImportError naming all of them). tqdm is optional (:mod:`.progress`)."""

from ..deps import check_dependencies

check_dependencies("seedstory-batch")
