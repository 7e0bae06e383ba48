"""Running several instances of the web service (notebook 08): a throwaway PostgreSQL server they
share, nginx in front of them, the fleet itself (start, health checks, kill, restart, a rolling
deploy), network namespaces as separate hosts, and a load of users that counts what it saw.
"""
