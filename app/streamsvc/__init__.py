"""The stream service: catalogue, audio with HTTP Range and play records, on PostgreSQL and Redis.

`streamsvc.wsgi:create_app()` builds the WSGI application (gunicorn calls it in each worker);
`python -m streamsvc` runs the operator commands (migrate, seed, health).
"""
