"""``consenttrace``: the command line for legal and ML teams, over the services' HTTP APIs.

It never touches a database: every command is one (or, for ``cases follow``, a series of)
HTTP calls to the deletion, lineage or registry API, with the caller's API key as a bearer
token. Modules: ``app`` (the command tree and exit codes), ``client`` (HTTP and errors),
``output`` (tables and JSON), ``transfer`` (streamed uploads and downloads with progress),
``cases``, ``evidence``, ``follow``, ``lineage``, ``registry`` (the commands).
"""
