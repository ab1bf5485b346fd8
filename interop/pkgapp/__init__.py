"""A package whose Celery app lives in a `celery_app` submodule that this
`__init__` does not import: `-A pkgapp` must still find it."""
