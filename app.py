"""Development entry point: ``python app.py`` runs Flask's dev server (use gunicorn in production)."""

import os

from nexus import create_app, start_worker

if __name__ == "__main__":
    app = create_app()
    app.extensions["nexus"].store.ensure()
    app.extensions["nexus"].store.clean_leftovers()
    start_worker(app)
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8080")), threaded=True)
