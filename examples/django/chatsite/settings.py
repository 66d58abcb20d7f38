"""Settings for the switchyard Django example: views on gunicorn sync workers,
a Channels chat consumer on daphne, groups through channels_redis.

Everything is on 127.0.0.1; see run.sh for the ports.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]

# --- behind switchyard --------------------------------------------------------
# switchyard terminates TLS and sends X-Forwarded-Proto: https, so
# request.is_secure() is true and CSRF's Origin check compares against https://.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# The Host the client used (with its port) comes in X-Forwarded-Host, and the
# port it connected to in X-Forwarded-Port (request.get_port()).
USE_X_FORWARDED_HOST = True
USE_X_FORWARDED_PORT = True
CSRF_COOKIE_SECURE = True
SESSION_COOKIE_SECURE = True
# The client's address: switchyard replaces X-Forwarded-For and X-Real-IP
# with it (it trusts no proxy in front of it here). daphne --proxy-headers
# puts it in scope["client"]; under gunicorn, REMOTE_ADDR would not be the
# client (switchyard connects over a unix socket), so RealIPMiddleware sets it
# from X-Real-IP (safe only because gunicorn listens on a unix socket,
# reachable through switchyard alone).

INSTALLED_APPS = [
    "daphne",
    "django.contrib.staticfiles",
    "channels",
    "chatsite",
]

# No django.middleware.gzip.GZipMiddleware: switchyard compresses the views'
# answers (compress = true on the site's app route), so no sync worker
# spends its time on it, and a view opts out with Cache-Control: no-transform.
MIDDLEWARE = [
    "chatsite.middleware.RealIPMiddleware",   # first: REMOTE_ADDR for everything after it
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
WSGI_APPLICATION = "chatsite.wsgi.application"
ASGI_APPLICATION = "chatsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

# No database: the example keeps no state beyond the chat groups in Redis.
DATABASES = {}

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:16379/0")
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    }
}

# Uploads: switchyard buffers the whole body before a worker sees it
# (max_body in the site file); Django spools files over 2.5 MB to disk.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

# --- files switchyard serves ---------------------------------------------------
# Everything under .data/ is generated (gitignored); ../run.sh creates it
# before switchyard starts, because a files route's directory must exist when
# the configuration is loaded. The routes are in switchyard/sites/django.toml.
DATA_DIR = BASE_DIR / ".data"

# `manage.py collectstatic` copies every app's static/ here; switchyard's
# /static/ route serves it (gunicorn never sees a static request). The
# manifest storage gives each file a name with its content hash
# (chat.3f2a9c1b7e0d.js), so the route can say `immutable`: a changed file
# gets a new name. run.sh also writes a .gz next to each CSS and JS file,
# which switchyard sends to clients that accept gzip.
STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"

# User uploads (default_storage): served by the /media/ route.
MEDIA_URL = "/media/"
MEDIA_ROOT = DATA_DIR / "media"

# Private files, outside STATIC_ROOT and MEDIA_ROOT: no public URL maps to
# them. chatsite.views.download checks the request and answers
# X-Accel-Redirect: PROTECTED_URL + name, which switchyard resolves through
# its `internal = true` /protected/ route (django-sendfile2's nginx backend
# does the same with SENDFILE_ROOT and SENDFILE_URL).
PROTECTED_ROOT = DATA_DIR / "protected"
PROTECTED_URL = "/protected/"

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage",
    },
}

USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
