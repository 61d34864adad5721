"""backupsite: a self-hosted backup panel.

The Celery app lives in ``backupsite.celery``; tasks import it from there (rather than
through this package) so that importing the settings never pulls Celery in.
"""

__version__ = "0.1.0"
