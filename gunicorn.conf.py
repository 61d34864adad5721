"""gunicorn's settings file: gunicorn reads ``./gunicorn.conf.py`` from its working
directory (the project folder; ``/app`` in the image), whatever its command line says.

With ``LOG_FORMAT=json`` gunicorn's own lines (start-up, workers, the access log) are
JSON objects too, like the application's (backupsite/logs.py); plain text otherwise.
"""

import os

if os.environ.get("LOG_FORMAT", "plain").strip().lower() == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"run_id": {"()": "backupsite.logs.RunIdFilter"}},
        "formatters": {"json": {"()": "backupsite.logs.JsonFormatter"}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["run_id"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": os.environ.get("LOG_LEVEL", "INFO").strip().upper(), "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        },
    }
