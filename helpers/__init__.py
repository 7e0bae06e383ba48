"""The notebooks' helpers, one folder per job (see the README's layout).

``runtime/`` runs the Copilot runtime, ``model/`` the model behind it, ``tools/`` the application's
file tools, ``serving/`` many users on one runtime, ``store/`` session state in a database, and
``notebook/`` what the notebooks print and show. At the bottom, used by all of them: ``run``
(a folder per run, clean-up at kernel exit) and ``events`` (a session's events).
"""
