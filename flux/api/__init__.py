"""The management API and what it manages: deploys and versions (`deploy.py`), secrets (`secrets.py`),
tenants and API keys (`keys.py`), admin keys (`admin.py`), and the JSON endpoints under `/flux/api/`
(`resources.py`) that the CLI and a dashboard share."""
