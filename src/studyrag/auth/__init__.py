"""Accounts and access: the mode (local or multi-user), users and their passwords, API keys,
login sessions, notebook shares and the access policy every route declares.

SQL in db/auth.py; HTTP in api/routes/auth.py and api/routes/shares.py; CLI in cli/users.py
and cli/keys.py. The rules are in docs/operations.md ("Accounts and access").
"""
