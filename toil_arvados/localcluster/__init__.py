"""A single-machine, Arvados-compatible cluster: API server, Keep, dispatcher and event bus.

It speaks the Arvados REST API, the Keep block protocol and the websocket event protocol well
enough that the unmodified ``arvados-python-client`` SDK and Arvados' command-line tools use it.
"""
