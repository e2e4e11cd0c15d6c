"""Broker backends, one package each; ``BACKENDS`` is the one list of them.

Importing this package imports no backend: ``open_broker`` imports the one a
command names, so a Redis deployment never loads pika and vice versa.
"""

#: Backends by the name ``TTG_BACKEND`` uses, and the module implementing each.
BACKENDS = {"redis": "ttg.brokers.redis", "rabbitmq": "ttg.brokers.rabbitmq"}
